#!/usr/bin/env bash
# End-to-end check of an MCP endpoint (normally the gateway) with the MCP Inspector CLI.
#
# Usage: scripts/e2e_inspector.sh [options] URL [TOKEN [TOOL [key=value ...]]]
#
#   URL        Streamable HTTP endpoint (…/mcp, …/mcp/<server>); a URL ending in /sse uses the
#              legacy HTTP+SSE transport
#   TOKEN      sent as "Authorization: Bearer TOKEN"; "" or "-" sends none
#   TOOL       tool to call after tools/list (default: the first listed tool); "-" lists only
#   key=value  tool arguments (the Inspector coerces values to the tool's schema types);
#              --args-json '{"k": ...}' passes one JSON object verbatim instead
#
# Options:
#   --era legacy|modern|auto|both   protocol era(s) to run, default both (legacy, then modern)
#   --expect TEXT                   the call result must contain TEXT
#   --expect-error                  the call must fail (JSON-RPC error or isError), e.g. a denial
#   --header 'Name: value'          extra HTTP header (repeatable)
#   --timeout SECONDS               per Inspector invocation (default 60)
#
# For each era: `tools/list` (must list TOOL), then `tools/call`. The Inspector never starts an
# interactive OAuth login here (--stored-auth-only) and keeps its files under
# $PEERS/run/inspector-home, not in $HOME. Needs the peers (scripts/install-peers.sh); reads
# $PORTCULLIS_PEERS/env.sh. Exit code 0 when every era passed, 1 otherwise, 2 on bad usage.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_DIR="${PORTCULLIS_PEERS:-$REPO/.mcp-peers}"
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-2}"
}

ERA=both
EXPECT=""
EXPECT_ERROR=0
ARGS_JSON=""
TIMEOUT=60
HEADERS=()
POS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --era) ERA="${2:?--era needs a value}"; shift 2 ;;
    --expect) EXPECT="${2?--expect needs a value}"; shift 2 ;;
    --expect-error) EXPECT_ERROR=1; shift ;;
    --args-json) ARGS_JSON="${2:?--args-json needs a value}"; shift 2 ;;
    --header) HEADERS+=("${2:?--header needs a value}"); shift 2 ;;
    --timeout) TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
    -h | --help) usage 0 ;;
    --) shift; POS+=("$@"); break ;;
    -) POS+=("$1"); shift ;;
    -*) echo "e2e_inspector: unknown option $1" >&2; usage 2 ;;
    *) POS+=("$1"); shift ;;
  esac
done
[ ${#POS[@]} -ge 1 ] || usage 2
URL="${POS[0]}"
TOKEN="${POS[1]:-}"
TOOL="${POS[2]:-}"
TOOL_ARGS=("${POS[@]:3}")
[ "$TOKEN" = "-" ] && TOKEN=""
case "$ERA" in
  both) ERAS=(legacy modern) ;;
  legacy | modern | auto) ERAS=("$ERA") ;;
  *) echo "e2e_inspector: --era must be legacy, modern, auto or both" >&2; exit 2 ;;
esac
if [ -n "$ARGS_JSON" ] && [ ${#TOOL_ARGS[@]} -gt 0 ]; then
  echo "e2e_inspector: give tool arguments either as key=value or with --args-json, not both" >&2
  exit 2
fi
for kv in "${TOOL_ARGS[@]}"; do
  case "$kv" in *=*) ;; *) echo "e2e_inspector: tool argument '$kv' is not key=value" >&2; exit 2 ;; esac
done

[ -f "$PEERS_DIR/env.sh" ] || { echo "e2e_inspector: $PEERS_DIR/env.sh missing; run scripts/install-peers.sh" >&2; exit 2; }
# shellcheck source=/dev/null
source "$PEERS_DIR/env.sh"
PYTHON="${PYTHON:-python3}"

case "$URL" in */sse | */sse/) TRANSPORT=sse ;; *) TRANSPORT=http ;; esac
IHOME="${INSPECTOR_HOME:-$PEERS/run/inspector-home}"
mkdir -p "$IHOME"
COMMON=(--cli "$URL" --transport "$TRANSPORT" --stored-auth-only --connect-timeout 15000 --format json -q)
[ -n "$TOKEN" ] && COMMON+=(--header "Authorization: Bearer $TOKEN")
for h in "${HEADERS[@]}"; do COMMON+=(--header "$h"); done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/e2e-inspector.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# inspector ERA OUTFILE ARGS... -> exit code of the Inspector; stdout+stderr in OUTFILE
inspector() {
  local era="$1" outfile="$2"
  shift 2
  local rc=0
  HOME="$IHOME" MCP_CATALOG_PATH="$IHOME/catalog.json" MCP_CLIENT_CONFIG_PATH="$IHOME/client.json" \
    PATH="$NODE22_BIN:$PATH" timeout -k 5 "$TIMEOUT" \
    "$INSPECTOR" "${COMMON[@]}" --protocol-era "$era" "$@" </dev/null >"$outfile" 2>&1 || rc=$?
  [ "$rc" = 124 ] && echo "{\"error\":{\"code\":\"timeout\",\"message\":\"no answer within ${TIMEOUT}s\"}}" >>"$outfile"
  return "$rc"
}

# jget FILE PYEXPR: evaluate PYEXPR with `d` = the JSON object the Inspector printed (last JSON line)
jget() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
doc = None
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    line = line.strip()
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except ValueError:
            pass
d = doc or {}
v = eval(sys.argv[2], {"d": d, "json": json})
print(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
EOF
}

# all text of a tools/call result: text content, embedded text resources, structuredContent
TEXT_EXPR='"\n".join([c.get("text") or (c.get("resource") or {}).get("text") or "" for c in d.get("result", {}).get("content", [])] + [json.dumps(d.get("result", {}).get("structuredContent"), ensure_ascii=False)])'
say() { echo "[e2e-inspector $1] $2"; }
FAILED=()
PASSED=()
for era in "${ERAS[@]}"; do
  out="$TMP/list-$era.json"
  if ! inspector "$era" "$out" --method tools/list; then
    say "$era" "FAIL tools/list: $(tail -c 400 "$out")"
    FAILED+=("$era")
    continue
  fi
  names="$(jget "$out" '" ".join(t.get("name", "") for t in d.get("result", {}).get("tools", []))')"
  if [ -z "$names" ]; then
    say "$era" "FAIL tools/list returned no tools: $(head -c 300 "$out")"
    FAILED+=("$era")
    continue
  fi
  say "$era" "tools/list: $(wc -w <<<"$names") tools: $(cut -c1-200 <<<"$names")"
  if [ "$TOOL" = "-" ]; then
    say "$era" "PASS (list only)"
    PASSED+=("$era")
    continue
  fi
  tool="${TOOL:-${names%% *}}"
  if ! grep -qx -- "$tool" <<<"${names// /$'\n'}"; then
    say "$era" "FAIL tool '$tool' is not in tools/list"
    FAILED+=("$era")
    continue
  fi
  call=(--method tools/call --tool-name "$tool")
  if [ -n "$ARGS_JSON" ]; then
    call+=(--tool-args-json "$ARGS_JSON")
  elif [ ${#TOOL_ARGS[@]} -gt 0 ]; then
    call+=(--tool-arg "${TOOL_ARGS[@]}")
  fi
  out="$TMP/call-$era.json"
  rc=0
  inspector "$era" "$out" "${call[@]}" || rc=$?
  say "$era" "tools/call $tool (exit $rc): $(grep -m1 '^{' "$out" | cut -c1-300 || true)"
  is_error="$(jget "$out" 'bool(d.get("error")) or bool(d.get("result", {}).get("isError"))')"
  if [ "$EXPECT_ERROR" = 1 ]; then
    if [ "$is_error" = true ] && [ "$rc" != 124 ]; then
      say "$era" "PASS (error as expected)"
      PASSED+=("$era")
    else
      say "$era" "FAIL the call succeeded but --expect-error was given"
      FAILED+=("$era")
    fi
    continue
  fi
  if [ "$rc" != 0 ] || [ "$is_error" = true ]; then
    say "$era" "FAIL tools/call $tool: $(tail -c 400 "$out")"
    FAILED+=("$era")
    continue
  fi
  if [ -n "$EXPECT" ] && ! grep -qF -- "$EXPECT" <(jget "$out" "$TEXT_EXPR"); then
    say "$era" "FAIL result does not contain '$EXPECT'"
    FAILED+=("$era")
    continue
  fi
  say "$era" "PASS"
  PASSED+=("$era")
done

summary=""
for e in "${PASSED[@]}"; do summary+="$e ok, "; done
for e in "${FAILED[@]}"; do summary+="$e FAILED, "; done
echo "[e2e-inspector] $URL: ${summary%, }"
[ ${#FAILED[@]} -eq 0 ]
