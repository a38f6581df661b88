# shellcheck shell=bash
# Background-process helpers for the test scripts (sourced, not run).
#
#   proc_start NAME LOG CMD...      start CMD in the background (stdin from /dev/null, stdout and
#                                   stderr to LOG), remember its PID under NAME; sets PROC_PID
#   proc_start_split NAME OUT ERR CMD...   same, stdout and stderr to separate files
#   proc_alive NAME                 is it still running?
#   proc_stop NAME                  TERM, then KILL after 5 s; its direct children too (by PID)
#   proc_stop_all                   stop everything started here (installed as an EXIT trap by
#                                   proc_install_trap)
#   wait_port PORT SECONDS [NAME]   wait until 127.0.0.1:PORT accepts connections; fails early
#                                   when process NAME exits
#   wait_line FILE REGEX SECONDS [NAME]  wait until FILE has a line matching REGEX (grep -E); the
#                                   first match is left in WAIT_LINE
#   free_port                       print a TCP port that is free on 127.0.0.1 right now
#
# Every process is stopped by the PID recorded when it was started, never by name. PID files are
# also written to $PROC_RUN_DIR (default: $PEERS/run or /tmp) for manual clean-up after a crash.

declare -A PROC_PIDS=()
PROC_ORDER=()
PROC_RUN_DIR="${PROC_RUN_DIR:-${PEERS:-/tmp}/run}"

proc_start() {
  local name="$1" log="$2"
  shift 2
  proc_start_split "$name" "$log" "$log" "$@"
}

proc_start_split() {
  local name="$1" out="$2" err="$3"
  shift 3
  mkdir -p "$PROC_RUN_DIR"
  if [ "$out" = "$err" ]; then
    "$@" </dev/null >"$out" 2>&1 &
  else
    "$@" </dev/null >"$out" 2>"$err" &
  fi
  PROC_PID=$!
  PROC_PIDS[$name]=$PROC_PID
  PROC_ORDER+=("$name")
  echo "$PROC_PID" >"$PROC_RUN_DIR/$name.pid"
}

proc_alive() {
  local pid="${PROC_PIDS[$1]:-}"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

proc_stop() {
  local name="$1" pid kids i
  pid="${PROC_PIDS[$name]:-}"
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kids="$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ' || true)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    for k in $kids; do kill -0 "$k" 2>/dev/null && kill -TERM "$k" 2>/dev/null || true; done
  fi
  wait "$pid" 2>/dev/null || true
  unset "PROC_PIDS[$name]"
  rm -f "$PROC_RUN_DIR/$name.pid"
}

proc_stop_all() {
  local i
  for ((i = ${#PROC_ORDER[@]} - 1; i >= 0; i--)); do
    proc_stop "${PROC_ORDER[$i]}"
  done
  PROC_ORDER=()
}

proc_install_trap() {
  trap 'proc_stop_all' EXIT
  trap 'echo "interrupted" >&2; exit 130' INT TERM
}

wait_port() {
  local port="$1" secs="$2" name="${3:-}" deadline
  deadline=$(($(date +%s) + secs))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    if [ -n "$name" ] && ! proc_alive "$name"; then
      return 1
    fi
    sleep 0.1
  done
  return 1
}

wait_line() {
  local file="$1" regex="$2" secs="$3" name="${4:-}" deadline
  deadline=$(($(date +%s) + secs))
  WAIT_LINE=""
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if [ -f "$file" ] && WAIT_LINE="$(grep -m1 -E "$regex" "$file")"; then
      return 0
    fi
    if [ -n "$name" ] && ! proc_alive "$name"; then
      sleep 0.2 # let a last line land
      [ -f "$file" ] && WAIT_LINE="$(grep -m1 -E "$regex" "$file")" && return 0
      return 1
    fi
    sleep 0.1
  done
  return 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
