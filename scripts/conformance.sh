#!/usr/bin/env bash
# Run the official MCP conformance suite (server scenarios) directly against our fixture server
# and again through the gateway, and fail on any check that passes directly but not through the
# gateway.
#
# Usage: scripts/conformance.sh [options]
#   --requirements "REV ..."  requirement sets to run (default: "2025-11-25 2026-07-28")
#   --fixture-url URL         use this already running MCP server as the upstream instead of
#                             building and starting `portcullis-fixture http`
#   --gateway auto|required|skip
#                             auto (default): run the gateway part when `portcullis --help`
#                             lists a `serve` command (until the gateway exists the part is
#                             skipped with a notice); required: a missing gateway is a failure
#   --standin-gateway         dry run of the gateway part with FastMCP URL proxies standing in
#                             for the gateway (one per upstream); for developing this script
#   --no-everything           skip the generic scenarios against server-everything
#   --write-baselines         write scripts/conformance-baselines/fixture-REV.yml from the direct
#                             runs (the fixture's own expected failures)
#   --no-build                use existing binaries (PORTCULLIS_FIXTURE_BIN / PORTCULLIS_BIN or
#                             $CARGO_TARGET_DIR/debug/…) without running cargo build
#
# What runs (all servers on 127.0.0.1, free ports, stopped by PID on exit):
#   1. `portcullis-fixture http --listen 127.0.0.1:0` (first stdout line:
#      `listening on http://127.0.0.1:PORT/mcp`), and server-everything (streamable HTTP)
#   2. direct: `conformance server --url <fixture> --requirements REV -o direct-REV` per REV; when
#      scripts/conformance-baselines/fixture-REV.yml exists it is passed as --expected-failures
#      and the run must pass, otherwise the fixture's own failures are only reported
#   3. gateway: `portcullis serve --config <generated portcullis.yaml>` with the catalog servers
#      `fixture` and `everything`, `auth.anonymous` (agent `conformance`) and an allow rule; the
#      suite runs again against http://127.0.0.1:GWPORT/mcp/fixture (-o via-gateway-REV), and
#      scripts/conformance_diff.py compares the two runs check by check (REGRESSION = exit 1;
#      regressions listed in scripts/conformance-baselines/gateway-known-regressions.txt, one
#      `scenario :: check-id` per line with a reason, are reported but accepted)
#   4. generic scenarios (table in TESTING.md §8.1) against server-everything, direct and through
#      /mcp/everything, diffed the same way; plus scripts/e2e_python.py and
#      scripts/e2e_inspector.sh through the gateway (both eras)
# Results: $PORTCULLIS_PEERS/results/conformance/ (wiped at the start of every run); the last line
# of summary.txt there is the verdict.
#
# Exit code: 0 all good, 1 a failure or regression, 3 skipped (no fixture binary with an `http`
# command yet and --fixture-url not given; PORTCULLIS_CONFORMANCE_REQUIRE=1 turns that into 1).
#
# Environment: PORTCULLIS_PEERS, CARGO_TARGET_DIR (default ~/.cache/portcullis-target),
# PORTCULLIS_FIXTURE_BIN, PORTCULLIS_BIN, PORTCULLIS_CONFORMANCE_CONFIG (a portcullis.yaml template
# with @GWPORT@, @FIXTURE_URL@, @EVERYTHING_URL@ placeholders, replacing the generated one),
# CONFORMANCE_TIMEOUT_MS (per scenario, default 30000).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}"
REQUIREMENTS="2025-11-25 2026-07-28"
FIXTURE_URL=""
GATEWAY_MODE=auto
STANDIN=0
EVERYTHING=1
WRITE_BASELINES=0
BUILD=1
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-2}"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --requirements) REQUIREMENTS="${2:?}"; shift 2 ;;
    --fixture-url) FIXTURE_URL="${2:?}"; shift 2 ;;
    --gateway) GATEWAY_MODE="${2:?}"; shift 2 ;;
    --standin-gateway) STANDIN=1; shift ;;
    --no-everything) EVERYTHING=0; shift ;;
    --write-baselines) WRITE_BASELINES=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage 0 ;;
    *) echo "conformance.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
case "$GATEWAY_MODE" in auto | required | skip) ;; *) echo "--gateway: auto, required or skip" >&2; exit 2 ;; esac

bash "$REPO/scripts/install-peers.sh" --quiet
# shellcheck source=/dev/null
source "${PORTCULLIS_PEERS:-$REPO/.mcp-peers}/env.sh"
# shellcheck source=lib/proc.sh
source "$REPO/scripts/lib/proc.sh"
proc_install_trap

RES="$PEERS/results/conformance"
rm -rf "$RES"
mkdir -p "$RES/logs"
BASELINES="$REPO/scripts/conformance-baselines"
DIFF="$REPO/scripts/conformance_diff.py"
KNOWN=()
[ -f "$BASELINES/gateway-known-regressions.txt" ] && KNOWN=(--known "$BASELINES/gateway-known-regressions.txt")
TIMEOUT_MS="${CONFORMANCE_TIMEOUT_MS:-30000}"
GENERIC_SCENARIOS=(server-initialize ping logging-set-level tools-list resources-list prompts-list
  server-sse-multiple-streams server-session-lifecycle dns-rebinding-protection)

STEPS=()   # "status|name|detail"
FAILED=0
step() { # STATUS NAME DETAIL
  STEPS+=("$1|$2|$3")
  [ "$1" = FAIL ] && FAILED=1
  echo "[conformance] $1 $2${3:+ — $3}"
}
hr() { echo "[conformance] ---- $*"; }

# conf NAME ARGS...: run the suite (Node 22), bounded; log in $RES/logs/NAME.log; sets CONF_TOTAL
conf() {
  local name="$1" rc=0
  shift
  PATH="$NODE22_BIN:$PATH" timeout -k 10 1200 "$CONFORMANCE" server --timeout "$TIMEOUT_MS" "$@" \
    </dev/null >"$RES/logs/$name.log" 2>&1 || rc=$?
  CONF_TOTAL="$(grep -E '^Total:' "$RES/logs/$name.log" | tail -1 || true)"
  return "$rc"
}

# the table and the regressions of a diff (the file also lists improved and missing checks)
show_diff() { grep -vE '^   (improved|missing|unused) ' "$1" || true; }

has_results() { compgen -G "$1/*/checks.json" >/dev/null; }

# ------------------------------------------------------------------ binaries
FIXTURE_BIN="${PORTCULLIS_FIXTURE_BIN:-$CARGO_TARGET_DIR/debug/portcullis-fixture}"
GW_BIN="${PORTCULLIS_BIN:-$CARGO_TARGET_DIR/debug/portcullis}"
if [ "$BUILD" = 1 ] && [ -z "${PORTCULLIS_FIXTURE_BIN:-}${PORTCULLIS_BIN:-}" ]; then
  hr "cargo build -p portcullis-fixture -p portcullis"
  if ! (cd "$REPO" && cargo build --quiet -p portcullis-fixture -p portcullis) >"$RES/logs/build.log" 2>&1; then
    tail -40 "$RES/logs/build.log"
    step FAIL build "cargo build failed (log: $RES/logs/build.log)"
    exit 1
  fi
fi

# ------------------------------------------------------------------ upstreams
if [ -z "$FIXTURE_URL" ]; then
  if [ ! -x "$FIXTURE_BIN" ] || ! "$FIXTURE_BIN" --help 2>&1 | grep -qw http; then
    msg="$FIXTURE_BIN has no \`http\` command yet (crates/fixture not written?)"
    if [ "${PORTCULLIS_CONFORMANCE_REQUIRE:-0}" = 1 ]; then
      step FAIL fixture "$msg"
      exit 1
    fi
    step SKIP conformance "$msg; nothing to run"
    echo "SKIPPED: $msg" >"$RES/summary.txt"
    exit 3
  fi
  proc_start_split fixture "$RES/logs/fixture.out" "$RES/logs/fixture.err" "$FIXTURE_BIN" http --listen 127.0.0.1:0
  if ! wait_line "$RES/logs/fixture.out" 'listening on http://127\.0\.0\.1:[0-9]+/' 30 fixture; then
    tail -20 "$RES/logs/fixture.out" "$RES/logs/fixture.err" 2>/dev/null || true
    step FAIL fixture "portcullis-fixture did not print 'listening on http://127.0.0.1:PORT/mcp' within 30 s"
    exit 1
  fi
  FIXTURE_URL="$(grep -oE 'http://127\.0\.0\.1:[0-9]+/[^[:space:]]*' <<<"$WAIT_LINE" | head -1)"
  step PASS fixture "started: $FIXTURE_URL (pid ${PROC_PIDS[fixture]})"
else
  step INFO fixture "using the given upstream $FIXTURE_URL"
fi

EVERYTHING_URL=""
if [ "$EVERYTHING" = 1 ]; then
  proc_start everything "$RES/logs/everything.log" env PORT=0 "$NODE22_BIN/node" -r "$LOOPBACK_PRELOAD" "$EVERYTHING_JS" streamableHttp
  if wait_line "$RES/logs/everything.log" 'listening on 127\.0\.0\.1:[0-9]+' 30 everything; then
    EVERYTHING_URL="http://127.0.0.1:${WAIT_LINE##*:}/mcp"
    step PASS everything "started: $EVERYTHING_URL (pid ${PROC_PIDS[everything]})"
  else
    tail -20 "$RES/logs/everything.log" || true
    step FAIL everything "server-everything did not start"
    EVERYTHING=0
  fi
fi

# ------------------------------------------------------------------ direct runs
for rev in $REQUIREMENTS; do
  hr "direct $rev against $FIXTURE_URL"
  args=(--url "$FIXTURE_URL" --requirements "$rev" -o "$RES/direct-$rev")
  base="$BASELINES/fixture-$rev.yml"
  [ -f "$base" ] && [ "$WRITE_BASELINES" = 0 ] && args+=(--expected-failures "$base")
  rc=0
  conf "direct-$rev" "${args[@]}" || rc=$?
  if ! has_results "$RES/direct-$rev"; then
    tail -30 "$RES/logs/direct-$rev.log"
    step FAIL "direct $rev" "the suite wrote no results (rc=$rc, log: $RES/logs/direct-$rev.log)"
    continue
  fi
  python3 "$DIFF" --summary "$RES/direct-$rev" >"$RES/direct-$rev.summary.txt" || true
  if [ -f "$base" ] && [ "$WRITE_BASELINES" = 0 ]; then
    if [ "$rc" = 0 ]; then
      step PASS "direct $rev" "$CONF_TOTAL; baseline $(basename "$base") holds"
    else
      grep -E '^(✗|Baseline|Unexpected|  -)' "$RES/logs/direct-$rev.log" | tail -30 || true
      step FAIL "direct $rev" "$CONF_TOTAL; differs from baseline $(basename "$base") (log: $RES/logs/direct-$rev.log)"
    fi
  else
    step PASS "direct $rev" "$CONF_TOTAL (the fixture's own failures are not gated: no baseline file)"
  fi
  if [ "$WRITE_BASELINES" = 1 ]; then
    mkdir -p "$BASELINES"
    {
      echo "# Expected failures of our fixture (crates/fixture) at requirements $rev, for"
      echo "# conformance --expected-failures. Written by scripts/conformance.sh --write-baselines."
      python3 "$DIFF" --baseline "$RES/direct-$rev"
    } >"$base"
    echo "[conformance] wrote $base"
  fi
done

# ------------------------------------------------------------------ gateway
GW_READY=0
GW_BASE=""          # the gateway's base URL; routes are $GW_BASE/mcp/<server>
declare -A ROUTE=() # upstream name -> URL of that upstream through the gateway (or stand-in)

start_real_gateway() {
  local gwdir="$RES/gateway" port cfg
  mkdir -p "$gwdir"
  port="$(free_port)"
  cfg="$gwdir/portcullis.yaml"
  if [ -n "${PORTCULLIS_CONFORMANCE_CONFIG:-}" ]; then
    sed -e "s#@GWPORT@#$port#g" -e "s#@FIXTURE_URL@#$FIXTURE_URL#g" \
      -e "s#@EVERYTHING_URL@#${EVERYTHING_URL:-http://127.0.0.1:9/mcp}#g" "$PORTCULLIS_CONFORMANCE_CONFIG" >"$cfg"
  else
    {
      echo "# Generated by scripts/conformance.sh: the gateway under test for the conformance suite."
      echo "listen: 127.0.0.1:$port"
      echo "public_url: http://127.0.0.1:$port"
      echo "storage: sqlite://portcullis.db"
      echo "servers:"
      echo "  fixture:"
      echo "    url: $FIXTURE_URL"
      if [ -n "$EVERYTHING_URL" ]; then
        echo "  everything:"
        echo "    url: $EVERYTHING_URL"
      fi
      echo "auth:"
      echo "  anonymous: { agent: conformance }"
      echo "rules:"
      echo "  - { id: conformance-allow-all, allow: { agents: [conformance], servers: [fixture${EVERYTHING_URL:+, everything}] } }"
    } >"$cfg"
  fi
  hr "starting the gateway: $GW_BIN serve --config $cfg"
  pushd "$gwdir" >/dev/null # relative paths in the config (the SQLite file) land here
  proc_start gateway "$gwdir/gateway.log" env -u PORTCULLIS_LISTEN -u PORTCULLIS_PUBLIC_URL \
    -u PORTCULLIS_STORAGE RUST_LOG="${RUST_LOG:-info}" "$GW_BIN" serve --config "$cfg"
  popd >/dev/null
  if ! wait_port "$port" 60 gateway; then
    tail -30 "$gwdir/gateway.log" || true
    step FAIL gateway "portcullis serve did not listen on 127.0.0.1:$port within 60 s (log: $gwdir/gateway.log)"
    return 1
  fi
  GW_BASE="http://127.0.0.1:$port"
  ROUTE[fixture]="$GW_BASE/mcp/fixture"
  [ -n "$EVERYTHING_URL" ] && ROUTE[everything]="$GW_BASE/mcp/everything"
  step PASS gateway "listening at $GW_BASE (pid ${PROC_PIDS[gateway]}, config $cfg)"
}

start_standin() { # NAME UPSTREAM_URL: a FastMCP URL proxy in place of the gateway (dry runs only)
  local name="$1" up="$2" port
  port="$(free_port)"
  proc_start "standin-$name" "$RES/logs/standin-$name.log" "$FASTMCP" run "$up" --transport http \
    --host 127.0.0.1 --port "$port" --no-banner --skip-env
  wait_port "$port" 60 "standin-$name" || {
    step FAIL "stand-in $name" "FastMCP proxy did not start (log: $RES/logs/standin-$name.log)"
    return 1
  }
  ROUTE[$name]="http://127.0.0.1:$port/mcp"
  step INFO "stand-in $name" "FastMCP proxy ${ROUTE[$name]} -> $up (NOT our gateway)"
}

if [ "$STANDIN" = 1 ]; then
  [ -n "$FASTMCP" ] || { step FAIL stand-in "fastmcp is not installed"; exit 1; }
  start_standin fixture "$FIXTURE_URL" && GW_READY=1
  [ -n "$EVERYTHING_URL" ] && { start_standin everything "$EVERYTHING_URL" || true; }
elif [ "$GATEWAY_MODE" = skip ]; then
  step SKIP gateway "--gateway skip"
elif [ -x "$GW_BIN" ] && "$GW_BIN" --help 2>&1 | grep -qE '^[[:space:]]+serve([[:space:]]|$)'; then
  start_real_gateway && GW_READY=1
elif [ "$GATEWAY_MODE" = required ]; then
  step FAIL gateway "$GW_BIN has no \`serve\` command"
else
  step SKIP gateway "$GW_BIN has no \`serve\` command yet; gateway runs skipped (use --gateway required to fail instead)"
fi

if [ "$GW_READY" = 1 ]; then
  for rev in $REQUIREMENTS; do
    hr "via gateway $rev against ${ROUTE[fixture]}"
    rc=0
    conf "via-gateway-$rev" --url "${ROUTE[fixture]}" --requirements "$rev" -o "$RES/via-gateway-$rev" || rc=$?
    if ! has_results "$RES/direct-$rev"; then
      step FAIL "diff $rev" "no direct results to compare with"
      continue
    fi
    mkdir -p "$RES/via-gateway-$rev" # an empty run still diffs: every check missing
    drc=0
    python3 "$DIFF" "${KNOWN[@]}" "$RES/direct-$rev" "$RES/via-gateway-$rev" --name "fixture $rev: direct vs via gateway" \
      --json "$RES/diff-$rev.json" >"$RES/diff-$rev.txt" || drc=$?
    show_diff "$RES/diff-$rev.txt"
    if [ "$drc" = 0 ]; then
      step PASS "gateway $rev" "$CONF_TOTAL; no regressions vs direct"
    else
      step FAIL "gateway $rev" "$(tail -1 "$RES/diff-$rev.txt" | sed 's/^ *//') (see $RES/diff-$rev.txt)"
    fi
  done

  if [ -n "${ROUTE[everything]:-}" ]; then
    hr "generic scenarios against server-everything, direct and through the gateway (2025-11-25)"
    for sc in "${GENERIC_SCENARIOS[@]}"; do
      conf "everything-direct-$sc" --url "$EVERYTHING_URL" --scenario "$sc" --spec-version 2025-11-25 \
        -o "$RES/everything-direct" || true
      conf "everything-via-$sc" --url "${ROUTE[everything]}" --scenario "$sc" --spec-version 2025-11-25 \
        -o "$RES/everything-via-gateway" || true
    done
    mkdir -p "$RES/everything-via-gateway"
    drc=0
    python3 "$DIFF" "${KNOWN[@]}" "$RES/everything-direct" "$RES/everything-via-gateway" \
      --name "server-everything 2025-11-25 generic scenarios: direct vs via gateway" \
      --json "$RES/diff-everything.json" >"$RES/diff-everything.txt" || drc=$?
    show_diff "$RES/diff-everything.txt"
    if [ "$drc" = 0 ]; then
      step PASS "gateway everything" "generic scenarios: no regressions vs direct"
    else
      step FAIL "gateway everything" "$(tail -1 "$RES/diff-everything.txt" | sed 's/^ *//')"
    fi

    hr "end-to-end clients through the gateway (server-everything: echo)"
    if "$PY" "$REPO/scripts/e2e_python.py" "${ROUTE[everything]}" - echo message=through-the-gateway \
      --expect "Echo: through-the-gateway" >"$RES/logs/e2e-python.log" 2>&1; then
      step PASS "e2e python" "$(tail -1 "$RES/logs/e2e-python.log")"
    else
      cat "$RES/logs/e2e-python.log"
      step FAIL "e2e python" "$(tail -1 "$RES/logs/e2e-python.log")"
    fi
    if bash "$REPO/scripts/e2e_inspector.sh" "${ROUTE[everything]}" - echo message=through-the-gateway \
      --expect "Echo: through-the-gateway" >"$RES/logs/e2e-inspector.log" 2>&1; then
      step PASS "e2e inspector" "$(tail -1 "$RES/logs/e2e-inspector.log")"
    else
      cat "$RES/logs/e2e-inspector.log"
      step FAIL "e2e inspector" "$(tail -1 "$RES/logs/e2e-inspector.log")"
    fi
  fi
fi

# ------------------------------------------------------------------ summary
proc_stop_all
{
  echo "conformance summary ($(date -u +%Y-%m-%dT%H:%M:%SZ)), results in $RES"
  for s in "${STEPS[@]}"; do
    IFS='|' read -r st name detail <<<"$s"
    printf '  %-5s %-20s %s\n' "$st" "$name" "$detail"
  done
  if [ "$FAILED" = 0 ]; then echo "conformance: OK"; else echo "conformance: FAILED"; fi
} | tee "$RES/summary.txt"
exit "$FAILED"
