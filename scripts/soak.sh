#!/usr/bin/env bash
# Memory over a long run: pgbench at 200 transactions a second with every statement
# logged (about 1.4k log events a second), every source of the agent at 1 s, the
# session sampler at 1 s, a stand-in listener that takes everything. The agent's VmRSS
# is read every 10 s; the script prints it at each tenth of the run and compares the
# end with the tenth minute (the target: within 1 MB).
#   scripts/soak.sh [MINUTES]          (default 60)
# KEEP=1 keeps the work directory (rss.csv: seconds, kB; the agent's log).
# SOAK_AGENT_ENV="K=V …" sets variables for the agent alone, e.g. a heap profiler:
#   SOAK_AGENT_ENV="LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
#     MALLOC_CONF=prof:true,lg_prof_sample:12,lg_prof_interval:31,prof_prefix:/tmp/je/agent"
#   (Debian's libjemalloc-dev; then jeprof --base=EARLY.heap BINARY LATE.heap --text).
set -euo pipefail
cd "$(dirname "$0")/.."
MIN=${1:-60}
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_init soak
PREFIX='%m [%p] %q%u@%d %a '
bench_cluster <<CONF
logging_collector = on
log_destination = 'stderr'
log_directory = '$W/log'
log_filename = 'pg.log'
log_rotation_size = 0
log_rotation_age = 0
log_line_prefix = '$PREFIX'
log_statement = 'all'
synchronous_commit = off
max_connections = 100
CONF
as_pg "$BIN/pgbench -i -s 1 -h $W -U postgres postgres >/dev/null 2>&1"
bench_listener
cat > "$W/agent.toml" <<TOML
[agent]
project_id = "soak"
state_dir = "$W/state"
[database]
host = "$W"
user = "postgres_agent"
[collection]
interval_s = 1
sample_interval_ms = 1000
activity_interval_s = 60
$(for s in databases tables vacuum_progress horizon replication server_stats settings; do echo "${s}_interval_s = 1"; done)
[logs]
path = "$W/log/pg.log"
format = "stderr"
prefix = "$PREFIX"
[listener]
url = "http://127.0.0.1:$PORT/ingest/postgres"
token = "t"
TOML
# shellcheck disable=SC2086 # the variables are words on purpose
env ${SOAK_AGENT_ENV:-} "$AGENT" run -c "$W/agent.toml" --log-format json 2>"$W/agent.log" & APID=$!; pids+=($APID)
as_pg "$BIN/pgbench -h $W -U postgres -c 4 -j 2 -R 200 -T $((MIN * 60 + 30)) postgres >$W/pgbench.log 2>&1" & pids+=($!)
: > "$W/rss.csv"
step=$((MIN * 6))
for i in $(seq 1 $((MIN * 6))); do
  sleep 10
  kill -0 "$APID" 2>/dev/null || { echo "the agent exited; see $W/agent.log"; KEEP=1; exit 1; }
  echo "$((i * 10)) $(rss_kb "$APID")" >> "$W/rss.csv"
  if [ $((i % (step / 10))) -eq 0 ]; then
    echo "minute $((i / 6)): RSS $(awk '{v = $2} END {printf "%.1f", v / 1024}' "$W/rss.csv") MB"
  fi
done
python3 - "$W/rss.csv" "$MIN" <<'PY'
import sys, statistics
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
minutes = int(sys.argv[2])
def median_of(minute):
    v = [kb for s, kb in rows if minute * 60 - 60 < s <= minute * 60]
    return statistics.median(v) / 1024 if v else float("nan")
tenth, last = median_of(10), median_of(minutes)
print(f"RSS median over minute 10: {tenth:.1f} MB; over minute {minutes}: {last:.1f} MB; "
      f"difference {last - tenth:+.1f} MB; peak {max(kb for _, kb in rows) / 1024:.1f} MB")
PY
echo "events shipped: $(kill -USR1 "$APID"; sleep 1; python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["children"]["shipper"]["detail"]["events_sent_total"])' "$W/state/status.json")"
