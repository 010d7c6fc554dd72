#!/usr/bin/env bash
# The agent and its peers side by side, in one run, on this machine: pgbadger on the
# same server logs, prometheus-postgres-exporter against the same busy server. Prints
# a table (what, agent, peer, ratio) and writes it as Markdown to $OUT (default
# target/bench-peers.md) for BENCHMARKS.md.
#   scripts/bench-peers.sh                 (PostgreSQL 15; about 8 minutes)
#   LOG_MB=50 RUN_S=40 DEFAULTS_S=120 scripts/bench-peers.sh   (the defaults)
# PARTS="logs busy" (the default) or one of them; KEEP=1 keeps the work directory (the logs) for a look afterwards.
# Needs: pgbadger and prometheus-postgres-exporter (Debian: apt-get install pgbadger
# prometheus-postgres-exporter), curl, GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_MB=${LOG_MB:-50}
RUN_S=${RUN_S:-40}
DEFAULTS_S=${DEFAULTS_S:-120}
OUT=${OUT:-target/bench-peers.md}
for tool in pgbadger prometheus-postgres-exporter curl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-peers: $tool is missing (apt-get install pgbadger prometheus-postgres-exporter curl time)" >&2; exit 2; }
done
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_init peers
PGBENCH=/usr/lib/postgresql/15/bin/pgbench
PREFIX='%m [%p] %q%u@%d %a '
rows=()
row() { rows+=("$1|$2|$3|$4"); printf '%-62s %18s %18s %8s\n' "$1" "$2" "$3" "$4"; }
ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.1f}×' if b > 0 else '—')" "$1" "$2"; }
# Wall seconds, peak RSS (kB) and CPU seconds (user + system) of a command, output to
# /dev/null: "secs kb cpu".
timed() {
  /usr/bin/time -f '%e %M %U %S' -o "$W/time" "$@" >/dev/null 2>"$W/stderr" || { cat "$W/stderr" >&2; return 1; }
  awk '{ printf "%s %s %.2f\n", $1, $2, $3 + $4 }' "$W/time"
}

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"), $(uname -r)"
echo "== peers: $(pgbadger --version 2>&1 | head -1); $(prometheus-postgres-exporter --version 2>&1 | head -1)"

want() { [[ " ${PARTS:-logs busy} " == *" $1 "* ]]; }
bench_listener

# ---------------------------------------------------------------- logs
if want logs; then
# A real server's logs: pgbench with every statement logged, connections and errors,
# written by the server in all three formats at once.
bench_cluster <<CONF
logging_collector = on
log_destination = 'stderr,csvlog,jsonlog'
log_directory = '$W/log'
log_filename = 'pg.log'
log_rotation_size = 0
log_rotation_age = 0
log_line_prefix = '$PREFIX'
log_statement = 'all'
log_connections = on
log_disconnections = on
log_min_duration_statement = 50
log_checkpoints = on
log_autovacuum_min_duration = 0
synchronous_commit = off
CONF
sql -c "create database bench" >/dev/null
"$PGBENCH" -i -q -s 5 -h "$W" -U postgres bench >/dev/null 2>&1
round=0
while [ "$(stat -c %s "$W/log/pg.log")" -lt $((LOG_MB * 1000000)) ]; do
  # Every fifth round a connection per transaction (connection and disconnection lines).
  c=(); [ $((round++ % 5)) = 4 ] && c=(-C)
  "$PGBENCH" -n -c 4 -j 2 -T 5 "${c[@]}" -h "$W" -U postgres bench >/dev/null 2>&1 || true
  DB=bench sql -c "select 1/0" >/dev/null 2>&1 || true
  DB=bench sql -c "insert into pgbench_branches values (1, 0, 'dup')" >/dev/null 2>&1 || true
done
as_pg "$BIN/pg_ctl -D $W/data -m fast -w stop >/dev/null"
# The same amount of each format: the first LOG_MB MB, cut before a line that starts a
# message (csvlog and stderr continuation lines never start with the year).
cut_log() {
  python3 - "$1" "$2" "$((LOG_MB * 1000000))" <<'PY'
import sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, "rb").read(n + 1_000_000)
end = n
while end < len(data):
    nl = data.find(b"\n", end)
    if nl < 0 or data[nl + 1:nl + 3] in (b"20", b'{"'):
        end = nl + 1 if nl >= 0 else len(data)
        break
    end = nl + 1
open(dst, "wb").write(data[:end])
PY
}
cut_log "$W/log/pg.log" "$W/stderr.log"; cut_log "$W/log/pg.csv" "$W/csv.csv"; cut_log "$W/log/pg.json" "$W/json.json"
STDERR_LOG=$W/stderr.log; CSV_LOG=$W/csv.csv; JSON_LOG=$W/json.json
mb() { python3 -c "import os, sys; print(f'{os.path.getsize(sys.argv[1]) / 1e6:.0f}')" "$1"; }
echo "== logs: stderr $(mb "$STDERR_LOG") MB, csvlog $(mb "$CSV_LOG") MB, jsonlog $(mb "$JSON_LOG") MB"

# Best of three for the agent (seconds, the RSS and the CPU seconds of that run);
# pgbadger once, -j 1 (its report goes to a file). parse-log runs two threads (one reads
# and parses, one writes the JSON), so the CPU row says what each costs in all.
best_agent() {
  local best="" r
  for _ in 1 2 3; do
    r=$(timed "$AGENT" parse-log "$@")
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "${r%% *}" "${best%% *}"; then best=$r; fi
  done
  echo "$best"
}
mbps() { python3 -c "import os, sys; print(f'{os.path.getsize(sys.argv[1]) / 1e6 / max(float(sys.argv[2]), 1e-3):.1f}')" "$1" "$2"; }
for fmt in stderr csvlog jsonlog; do
  case $fmt in
    stderr) f=$STDERR_LOG; a=(--format stderr --prefix "$PREFIX"); p=(-f stderr --prefix "$PREFIX") ;;
    csvlog) f=$CSV_LOG; a=(--format csvlog); p=(-f csv) ;;
    jsonlog) f=$JSON_LOG; a=(--format jsonlog); p=(-f jsonlog) ;;
  esac
  read -r asec akb acpu < <(best_agent "${a[@]}" "$f")
  read -r psec pkb pcpu < <(timed pgbadger -q -j 1 "${p[@]}" -o "$W/report.html" "$f")
  am=$(mbps "$f" "$asec"); pm=$(mbps "$f" "$psec")
  row "$fmt log, $(mb "$f") MB: parse-log (JSON out) vs pgbadger, MB/s" "$am" "$pm" "$(ratio "$am" "$pm")"
  row "$fmt log: CPU, s (user + system)" "$acpu" "$pcpu" "$(ratio "$pcpu" "$acpu")"
  row "$fmt log: peak RSS, MB" "$((akb / 1024))" "$((pkb / 1024))" "$(ratio "$pkb" "$akb")"
done

# The daemon's log source: the stderr log from its beginning, twice. "shipped": file →
# parsed → spooled → shipped to a local listener, so the rate is delivery's once the
# spool holds 40 % of its cap (the reader waits there). "spooled": the same with
# delivery out of the way (nothing listens, a 4 GB cap): the reader and the spool alone.
# The rate runs from the agent's start to the reader's last batch
# (scripts/log-source-rate.py: status alone is a second late, half of a 50 MB run).
log_source() {
  local mode=$1 url cap=""
  if [ "$mode" = spooled ]; then
    url="http://127.0.0.1:1/ingest/postgres"; cap=$'[buffer]\nmax_bytes = 4000000000'
  else
    url="http://127.0.0.1:$PORT/ingest/postgres"
  fi
  rm -rf "$W/state-logs"
  cat > "$W/logs.toml" <<TOML
[agent]
project_id = "bench"
state_dir = "$W/state-logs"
[database]
host = "$W"
user = "postgres_agent"
[collection]
activity = false
statements = false
locks = false
system = false
sample_interval_ms = 0
$(printf '%s = false\n' databases tables vacuum_progress horizon replication server_stats settings)
[logs]
path = "$STDERR_LOG"
format = "stderr"
prefix = "$PREFIX"
start_at = "beginning"
[listener]
url = "$url"
token = "t"
$cap
TOML
  local r
  r=$(scripts/log-source-rate.py "$AGENT" "$W/logs.toml" "$W/state-logs" "$STDERR_LOG" "$W/agent-logs-$mode.log")
  read -r lrate lhwm lreader lspool <<<"$r"
}
log_source shipped
row "daemon log source, stderr file → parsed → spooled → shipped, MB/s" "$lrate" "—" ""
row "daemon log source (shipped): peak RSS, MB" "$((lhwm / 1024))" "—" ""
log_source spooled
row "daemon log source, file → parsed → spooled (not shipped), MB/s" "$lrate" "—" ""
row "daemon log source (spooled): CPU of the reader / the spool, s" "$(python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e3:.2f} / {int(sys.argv[2]) / 1e3:.2f}')" "$lreader" "$lspool")" "—" ""
row "daemon log source (spooled): peak RSS, MB" "$((lhwm / 1024))" "—" ""
fi

# ---------------------------------------------------------------- busy server
if want busy; then
# The server of overhead.sh: 5,000 statements, 200 idle connections, a light workload.
if [ -d "$W/data" ]; then
  as_pg "$BIN/pg_ctl -D $W/data -l $W/server.log -w start -o '-c logging_collector=off -c log_statement=none -c log_connections=off -c log_disconnections=off -c max_connections=350 -c pg_stat_statements.max=10000' >/dev/null"
else
  printf 'max_connections = 350\npg_stat_statements.max = 10000\n' | bench_cluster
fi
bench_statements
sql -c "create role postgres_exporter login; grant pg_monitor to postgres_exporter" >/dev/null
bench_idle 200
( while true; do sql -f "$W/workload.sql" >/dev/null 2>&1; sleep 1; done ) & pids+=($!)
sleep 2
conns=$(sql -c "select count(*) from pg_stat_activity where backend_type = 'client backend'")
entries=$(sql -c "select count(*) from pg_stat_statements")
echo "== busy server: $conns client connections, $entries statements"

# The exporter with its defaults plus every statement (what the agent reads), under
# the names of pg_stat_statements 1.8+.
cat > "$W/queries.yaml" <<'YAML'
pg_stat_statements:
  query: "SELECT t2.rolname, t3.datname, queryid, calls, total_exec_time / 1000 as total_time_seconds, rows, shared_blks_hit, shared_blks_read, shared_blks_dirtied, shared_blks_written, local_blks_hit, local_blks_read, temp_blks_read, temp_blks_written, blk_read_time / 1000 as blk_read_time_seconds, blk_write_time / 1000 as blk_write_time_seconds FROM pg_stat_statements t1 JOIN pg_roles t2 ON (t1.userid=t2.oid) JOIN pg_database t3 ON (t1.dbid=t3.oid)"
  metrics:
    - rolname: {usage: "LABEL", description: "role"}
    - datname: {usage: "LABEL", description: "database"}
    - queryid: {usage: "LABEL", description: "query id"}
    - calls: {usage: "COUNTER", description: "calls"}
    - total_time_seconds: {usage: "COUNTER", description: "time"}
    - rows: {usage: "COUNTER", description: "rows"}
    - shared_blks_hit: {usage: "COUNTER", description: "x"}
    - shared_blks_read: {usage: "COUNTER", description: "x"}
    - shared_blks_dirtied: {usage: "COUNTER", description: "x"}
    - shared_blks_written: {usage: "COUNTER", description: "x"}
    - local_blks_hit: {usage: "COUNTER", description: "x"}
    - local_blks_read: {usage: "COUNTER", description: "x"}
    - temp_blks_read: {usage: "COUNTER", description: "x"}
    - temp_blks_written: {usage: "COUNTER", description: "x"}
    - blk_read_time_seconds: {usage: "COUNTER", description: "x"}
    - blk_write_time_seconds: {usage: "COUNTER", description: "x"}
YAML
EXPORTER_PORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
DATA_SOURCE_NAME="host=$W user=postgres_exporter dbname=postgres sslmode=disable" \
  prometheus-postgres-exporter --web.listen-address="127.0.0.1:$EXPORTER_PORT" \
  --extend.query-path="$W/queries.yaml" --log.level=error >"$W/exporter.log" 2>&1 & EPID=$!; pids+=($EPID)
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$EXPORTER_PORT/metrics" -o /dev/null && break; sleep 0.2; done
# One scrape, warm (the first one above set up its connection): CPU, server time.
role_reset postgres_exporter
c0=$(cpu_ms "$EPID")
curl -fs "http://127.0.0.1:$EXPORTER_PORT/metrics" -o "$W/metrics"
c1=$(cpu_ms "$EPID")
read -r eserver _ < <(role_server_ms postgres_exporter)
ecpu=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$c0" "$c1")
erss=$(( $(rss_kb "$EPID") / 1024 ))
echo "   exporter scrape: $(grep -c '^pg_stat_statements_calls' "$W/metrics") statement series"

# The agent's cold `once`: every source once, first reading of everything.
cat > "$W/agent.toml" <<TOML
[agent]
project_id = "bench"
state_dir = "$W/state"
[database]
host = "$W"
user = "postgres_agent"
[collection]
interval_s = 2
sample_interval_ms = 0
$(printf '%s = false\n' databases tables vacuum_progress horizon replication server_stats settings)
logs = false
[listener]
url = "http://127.0.0.1:$PORT/ingest/postgres"
token = "t"
TOML
role_reset postgres_agent
# Ten cold reads, each with a state directory of its own: /usr/bin/time counts
# hundredths of a second, and one read takes about one.
: > "$W/times"
for k in $(seq 1 10); do
  sed "s|^state_dir = .*|state_dir = \"$W/state-once$k\"|" "$W/agent.toml" > "$W/once.toml"
  /usr/bin/time -f '%U %S %M' -a -o "$W/times" "$AGENT" once -c "$W/once.toml" >/dev/null 2>"$W/once.err"
done
read -r ou os okb < <(awk '{u += $1; s += $2; if ($3 > m) m = $3} END {print u / NR, s / NR, m}' "$W/times")
read -r oserver _ < <(role_server_ms postgres_agent)
oserver=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / 10:.1f}')" "$oserver")
ocpu=$(python3 -c "import sys; print(f'{(float(sys.argv[1]) + float(sys.argv[2])) * 1000:.1f}')" "$ou" "$os")
row "one cold read of all (agent once vs one exporter scrape): CPU, ms" "$ocpu" "$ecpu" "$(ratio "$ecpu" "$ocpu")"
row "  server time of its queries, ms" "$oserver" "$eserver" "$(ratio "$eserver" "$oserver")"
row "  RSS, MB" "$((okb / 1024))" "$erss" "$(ratio "$erss" "$((okb / 1024))")"

# Every 2 s for RUN_S: the agent's activity + statements + locks + system cycles, the
# exporter scraped as often. CPU and server time per cycle / scrape.
"$AGENT" run -c "$W/agent.toml" --log-format json 2>"$W/agent.log" & APID=$!; pids+=($APID)
sleep 6
kill -USR1 "$APID"; sleep 0.5
cyc() { python3 -c "import json, sys; c = json.load(open(sys.argv[1]))['children']; print(min(c[k]['detail']['cycles_total'] for k in ('pg_activity', 'pg_statements', 'pg_locks', 'system')))" "$W/state/status.json"; }
n0=$(cyc); a0=$(cpu_ms "$APID"); role_reset postgres_agent
arss=$(rss_steady "$APID" "$RUN_S")
a1=$(cpu_ms "$APID"); kill -USR1 "$APID"; sleep 0.5; n1=$(cyc)
read -r aserver _ < <(role_server_ms postgres_agent)
ahwm=$(awk -v k="$(hwm_kb "$APID")" 'BEGIN {printf "%.1f", k / 1024}')
kill "$APID"; wait "$APID" 2>/dev/null || true
n=$((n1 - n0))
acyc=$(python3 -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])) / int(sys.argv[3]):.1f}')" "$a0" "$a1" "$n")
asrv=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / int(sys.argv[2]):.1f}')" "$aserver" "$n")
role_reset postgres_exporter
e0=$(cpu_ms "$EPID"); k=0; end=$(( $(date +%s) + RUN_S ))
while [ "$(date +%s)" -lt "$end" ]; do curl -fs "http://127.0.0.1:$EXPORTER_PORT/metrics" -o /dev/null; k=$((k + 1)); sleep 2; done
e1=$(cpu_ms "$EPID")
read -r eserver2 _ < <(role_server_ms postgres_exporter)
escr=$(python3 -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])) / int(sys.argv[3]):.1f}')" "$e0" "$e1" "$k")
esrv=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / int(sys.argv[2]):.1f}')" "$eserver2" "$k")
ehwm=$(( $(hwm_kb "$EPID") / 1024 ))
row "every 2 s ($n agent cycles of 4 sources, $k scrapes): CPU per cycle, ms" "$acyc" "$escr" "$(ratio "$escr" "$acyc")"
row "  server time per cycle, ms" "$asrv" "$esrv" "$(ratio "$esrv" "$asrv")"
row "  RSS steady (median of each second) / peak, MB" "$arss / $ahwm" "— / $ehwm" ""
kill "$EPID"; wait "$EPID" 2>/dev/null || true

# The whole agent at its defaults (every source, 1 s session sampling, the health
# sources) for DEFAULTS_S, start-up left out: CPU and server time as % of one core.
cat > "$W/defaults.toml" <<TOML
[agent]
project_id = "bench"
state_dir = "$W/state-defaults"
[database]
host = "$W"
user = "postgres_agent"
[collection]
logs = false
[listener]
url = "http://127.0.0.1:$PORT/ingest/postgres"
token = "t"
TOML
"$AGENT" run -c "$W/defaults.toml" --log-format json 2>"$W/agent-defaults.log" & APID=$!; pids+=($APID)
sleep 15
a0=$(cpu_ms "$APID"); role_reset postgres_agent; t0=$(date +%s.%N)
drss=$(rss_steady "$APID" "$DEFAULTS_S")
a1=$(cpu_ms "$APID"); t1=$(date +%s.%N)
read -r dserver _ < <(role_server_ms postgres_agent)
dhwm=$(awk -v k="$(hwm_kb "$APID")" 'BEGIN {printf "%.1f", k / 1024}')
kill "$APID"; wait "$APID" 2>/dev/null || true
pct() { python3 -c "import sys; print(f'{float(sys.argv[1]) / ((float(sys.argv[3]) - float(sys.argv[2])) * 1000) * 100:.2f} %')" "$1" "$t0" "$t1"; }
row "whole agent at defaults, ${DEFAULTS_S} s: CPU, % of one core" "$(pct "$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$a0" "$a1")")" "" ""
row "  server time of its queries, % of one core" "$(pct "$dserver")" "" ""
row "  RSS steady (median of each second) / peak, MB" "$drss / $dhwm" "" ""
fi

mkdir -p "$(dirname "$OUT")"
{
  echo "| what | agent | peer | agent's advantage |"
  echo "|---|---|---|---|"
  for r in "${rows[@]}"; do IFS='|' read -r a b c d <<<"$r"; echo "| $a | $b | $c | $d |"; done
} > "$OUT"
echo "== table written to $OUT"
