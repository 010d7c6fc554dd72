#!/usr/bin/env bash
# Checks of the binary that ships (target/release): fault injection is not in it. The
# same setup against the debug build (what the tests use) must take the fault request,
# so the check proves it can fail.
#   scripts/release-checks.sh   (after cargo build --release and a debug build)
set -euo pipefail
cd "$(dirname "$0")/.."

# Runs BIN with a request to panic waiting for the system collector; prints "taken" when
# the request file was consumed, "kept" when three cycles ran and it is still there.
probe() {
  local bin=$1 d pid verdict=""
  d=$(mktemp -d)
  mkdir -p "$d/faults"
  echo panic > "$d/faults/system"
  cat > "$d/agent.toml" <<EOF
[agent]
project_id = "release-check"
state_dir = "$d/state"
[database]
host = "$d/no-socket"
connect_timeout_ms = 1000
[collection]
interval_s = 1
activity = false
statements = false
locks = false
logs = false
system = true
[listener]
url = "http://127.0.0.1:9/ingest"
EOF
  POSTGRES_AGENT_FAULT_DIR="$d/faults" "$bin" run -c "$d/agent.toml" --log-format json --log-level debug 2> "$d/log" &
  pid=$!
  local deadline=$((SECONDS + 60))
  while [ -z "$verdict" ] && [ $SECONDS -lt $deadline ]; do
    if [ ! -e "$d/faults/system" ]; then
      verdict=taken
    elif [ "$(grep -c 'collect_cycle' "$d/log" || true)" -ge 3 ]; then
      # The system collector is the only one: three of its cycles ran, request untouched.
      verdict=kept
    fi
    sleep 0.2
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$d"
  echo "${verdict:-timeout}"
}

debug=$(probe target/debug/postgres-agent)
release=$(probe target/release/postgres-agent)
echo "fault request: debug build ${debug}, release build ${release}"
[ "$debug" = taken ] || { echo "release-checks: the debug build did not take the fault request; the check proves nothing" >&2; exit 1; }
[ "$release" = kept ] || { echo "release-checks: the release build reads POSTGRES_AGENT_FAULT_DIR" >&2; exit 1; }
echo "release-checks: ok"
