#!/usr/bin/env bash
# The full test suite: `bash scripts/test.sh` (what the README and CI run).
#
#   1. scripts/install-peers.sh   third-party MCP peers into .mcp-peers/ (fast when up to date)
#   2. Rust tests                 `cargo nextest run --workspace` plus the doctests when
#                                 cargo-nextest is installed, otherwise `cargo test --workspace`;
#                                 the peers are found through PORTCULLIS_PEERS / .mcp-peers/peers.json
#   3. scripts/conformance.sh     the official conformance suite, direct and through the gateway
#
# Usage: scripts/test.sh [--no-conformance] [--no-nextest] [-- ARGS for cargo test / nextest]
# Every step runs even when an earlier one failed (except that nothing needing the peers runs
# when their installation failed). The last line is `N passed, N failed` over the steps; the exit
# code is non-zero when any step failed.
# Environment: CARGO_TARGET_DIR (default ~/.cache/portcullis-target), PORTCULLIS_PEERS.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}"
export PORTCULLIS_PEERS="${PORTCULLIS_PEERS:-$REPO/.mcp-peers}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-$([ -t 1 ] && echo auto || echo never)}"

CONFORMANCE=1
NEXTEST=auto
CARGO_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-conformance) CONFORMANCE=0; shift ;;
    --no-nextest) NEXTEST=no; shift ;;
    --) shift; CARGO_ARGS=("$@"); break ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown argument $1 (cargo arguments go after --)" >&2; exit 2 ;;
  esac
done

RESULTS=()
PASSED=0
FAILED=0
T0=$(date +%s)
banner() { printf '\n==== %s\n' "$*"; }
record() { # STATUS NAME SECONDS [NOTE]
  RESULTS+=("$(printf '  %-5s %-28s %5ss  %s' "$1" "$2" "$3" "${4:-}")")
  case "$1" in PASS) PASSED=$((PASSED + 1)) ;; FAIL) FAILED=$((FAILED + 1)) ;; esac
}
run_step() { # NAME CMD... ; exit code 3 from CMD means "skipped"
  local name="$1" t rc=0
  shift
  banner "$name: $*"
  t=$(date +%s)
  "$@" || rc=$?
  t=$(($(date +%s) - t))
  case "$rc" in
    0) record PASS "$name" "$t" ;;
    3) record SKIP "$name" "$t" "(nothing to run yet; see the output above)" ;;
    *) record FAIL "$name" "$t" "(exit $rc)" ;;
  esac
  return "$rc"
}

# 1. peers ----------------------------------------------------------------------------------
PEERS_OK=0
run_step "install peers" bash scripts/install-peers.sh && PEERS_OK=1
if [ "$PEERS_OK" = 1 ]; then
  # shellcheck source=/dev/null
  source "$PORTCULLIS_PEERS/env.sh"
fi

# 2. Rust tests -----------------------------------------------------------------------------
if [ "$NEXTEST" = auto ] && cargo nextest --version >/dev/null 2>&1; then
  NEXTEST=yes
fi
if [ "$NEXTEST" = yes ]; then
  # nextest does not run doctests; they get their own step
  run_step "cargo nextest (workspace)" cargo nextest run --workspace --no-tests=warn --no-fail-fast "${CARGO_ARGS[@]}"
  run_step "cargo test --doc" cargo test --workspace --doc --no-fail-fast
else
  run_step "cargo test (workspace)" cargo test --workspace --no-fail-fast "${CARGO_ARGS[@]}"
fi

# 3. conformance ----------------------------------------------------------------------------
if [ "$CONFORMANCE" = 0 ]; then
  record SKIP "conformance" 0 "(--no-conformance)"
elif [ "$PEERS_OK" = 1 ]; then
  run_step "conformance" bash scripts/conformance.sh
else
  record FAIL "conformance" 0 "(not run: the peers did not install)"
fi

# summary -----------------------------------------------------------------------------------
banner "summary ($(($(date +%s) - T0))s; CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
printf '%s\n' "${RESULTS[@]}"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
