#!/usr/bin/env bash
# What one agent costs watching a fleet: N PostgreSQL clusters on this host (default 10,
# each with 100 tables, 1,000 statements in pg_stat_statements, 20 idle sessions, a
# light workload, its log on), one agent with a [[servers]] entry each at the default
# intervals (every source, session sampling every second, every log read). Prints the
# agent's CPU (% of one core) over RUN_S seconds after a warm-up and its RSS (median
# and peak), in total and per server.
#   scripts/bench-fleet.sh [RUN_S]        (default 300: five of the 60 s cycles)
# SERVERS=N: how many clusters.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_S=${1:-300}
N=${SERVERS:-10}
WARM_S=${WARM_S:-30}
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_init fleet
stop_all() {
  for i in $(seq 1 "$N"); do
    as_pg "$BIN/pg_ctl -D $W/c$i/data -m immediate -w stop >/dev/null 2>&1" || true
  done
  bench_cleanup
}
trap stop_all EXIT
csql() { "$PSQL" -X -q -A -t -h "$W/c$1" -U postgres -d postgres "${@:2}"; }

python3 - "$W" <<'PY'
import sys
w = sys.argv[1]
cols = ", ".join(f"c{k} int" for k in range(10))
with open(f"{w}/setup.sql", "w") as f, open(f"{w}/workload.sql", "w") as g:
    for i in range(100):
        f.write(f"create table t{i} ({cols}); insert into t{i} select g,g,g,g,g,g,g,g,g,g from generate_series(1,20) g;\n")
    for i in range(100):
        for s in range(10):
            q = f"select c{s} from t{i} where c{(s + 1) % 10} = 1;\n"
            f.write(q)
            if i < 2:
                g.write(q)
PY

mkfifo "$W/idle"
sleep 36000 > "$W/idle" & HOLD=$!
servers=""
for i in $(seq 1 "$N"); do
  mkdir -p "$W/c$i"; chmod 777 "$W/c$i"
  as_pg "$BIN/initdb -D $W/c$i/data -U postgres --auth=trust --no-sync >/dev/null"
  cat >> "$W/c$i/data/postgresql.conf" <<CONF
port = 5432
listen_addresses = ''
unix_socket_directories = '$W/c$i'
shared_preload_libraries = 'pg_stat_statements'
shared_buffers = 16MB
fsync = off
logging_collector = on
log_directory = 'log'
log_file_mode = 0644
log_line_prefix = '%m [%p] %q%u@%d %a '
log_min_duration_statement = 100
log_connections = on
log_disconnections = on
CONF
  as_pg "$BIN/pg_ctl -D $W/c$i/data -l $W/c$i/server.log -w start >/dev/null"
  csql "$i" -c "create extension pg_stat_statements" >/dev/null
  csql "$i" -f "$W/setup.sql" >/dev/null
  for _ in $(seq 1 20); do
    "$PSQL" -X -q -h "$W/c$i" -U postgres -d postgres < "$W/idle" >/dev/null 2>&1 & pids+=($!)
  done
  ( while true; do csql "$i" -f "$W/workload.sql" >/dev/null; sleep 1; done ) & pids+=($!)
  servers+=$(printf '[[servers]]\nname = "db%s"\n[servers.database]\nhost = "%s"\n[servers.logs]\npath = "%s"\n' \
    "$i" "$W/c$i" "$W/c$i/data/log")$'\n'
done
echo "clusters: $N, statements each: $(csql 1 -c "select count(*) from pg_stat_statements")"

bench_listener
cat > "$W/agent.toml" <<TOML
[agent]
project_id = "fleet"
state_dir = "$W/state"
[database]
user = "postgres"
[listener]
url = "http://127.0.0.1:$PORT/ingest/postgres"
token = "t"
$servers
TOML
"$AGENT" run -c "$W/agent.toml" --log-format json 2>"$W/agent.log" & APID=$!; pids+=($APID)
sleep "$WARM_S"
cpu0=$(cpu_ms "$APID")
rss_med=$(rss_steady "$APID" "$RUN_S")
cpu1=$(cpu_ms "$APID")
hwm=$(hwm_kb "$APID")
kill -USR1 "$APID"; sleep 1
python3 - "$W/state/status.json" "$N" "$RUN_S" "$cpu0" "$cpu1" "$rss_med" "$hwm" <<'PY'
import json, sys
status, n, run_s, c0, c1, rss, hwm = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
children = json.load(open(status))["children"]
running = sum(1 for c in children.values() if c["state"] == "running")
errors = {k: c.get("last_error") for k, c in children.items() if c.get("last_error")}
cpu = (c1 - c0) / 1000 / run_s * 100
print(f"children running: {running} of {len(children)}; with an error: {len(errors)} {errors if errors else ''}")
print(f"agent CPU over {run_s:.0f} s: {cpu:.2f} % of one core ({cpu / n:.2f} % per server)")
print(f"agent RSS: median {rss:.1f} MB, peak {hwm / 1024:.1f} MB ({rss / n:.1f} MB per server at the median)")
PY
