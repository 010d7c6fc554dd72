#!/usr/bin/env bash
# Server time of each database health source on a cluster with many tables: DBS
# databases of TABLES tables each (default 4 × 2,500 = 10,000, each with a primary key),
# a light workload that writes to 20 tables of each database every second, and the agent
# running ONE source at a time (every INTERVAL_S, default 5 s; the tables pass too) for
# RUN_S seconds (default 40) as a pg_monitor role. The server's own pg_stat_statements
# gives the agent's query time; status.json gives the cycles.
#   scripts/health-cost.sh                 (PostgreSQL 15; PG_BIN=… for another)
#   DBS=4 TABLES=2500 RUN_S=40 scripts/health-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DBS=${DBS:-4}
TABLES=${TABLES:-2500}
RUN_S=${RUN_S:-40}
INTERVAL_S=${INTERVAL_S:-5}
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_init health
printf 'pg_stat_statements.track = all\nmax_locks_per_transaction = 1024\n' | bench_cluster
echo "creating $DBS databases of $TABLES tables…"
for d in $(seq 1 "$DBS"); do
  DB=postgres sql -c "create database db$d"
  for k in $(seq 0 500 $((TABLES - 1))); do
    DB=db$d sql -c "do \$\$ begin for i in $((k + 1))..$((k + 500 < TABLES ? k + 500 : TABLES)) loop
      execute format('create table t%s (id int primary key, v text)', i); end loop; end \$\$;"
  done
done
DB=postgres sql -c "vacuum analyze" >/dev/null
# The workload: 20 tables of each database written every second.
( while true; do
    for d in $(seq 1 "$DBS"); do
      DB=db$d sql -c "do \$\$ begin for i in 1..20 loop execute format('insert into t%s values (%s, ''x'') on conflict (id) do update set v = ''y''', i, (random() * 1000)::int); end loop; end \$\$;" >/dev/null
    done
    sleep 1
  done ) & pids+=($!)

bench_listener

all="databases tables vacuum_progress horizon replication server_stats settings"
agent_ms() { DB=postgres sql -c "select round(coalesce(sum(total_exec_time), 0)::numeric, 1) from pg_stat_statements where userid = (select oid from pg_roles where rolname = 'postgres_agent')"; }
cycles_of() {
  kill -USR1 "$1"; sleep 0.3
  python3 -c 'import json,sys
try: c=json.load(open(sys.argv[1]))["children"]
except Exception: print(0); sys.exit()
print(sum((v.get("detail") or {}).get("cycles_total", 0) for k, v in c.items() if k.startswith("pg_")))' "$2"
}
printf '%-16s %14s %8s %18s %16s\n' source "first cycle ms" cycles "ms per cycle after" "agent peak RSS"
for src in $all; do
  {
    printf '[agent]\nproject_id = "health-cost"\nstate_dir = "%s/state-%s"\n' "$W" "$src"
    printf '[database]\nhost = "%s"\nuser = "postgres_agent"\n' "$W"
    printf '[collection]\nsample_interval_ms = 0\nactivity = false\nstatements = false\nlocks = false\nsystem = false\nlogs = false\n'
    for s in $all; do
      if [ "$s" = "$src" ]; then printf '%s = true\n%s_interval_s = %s\n' "$s" "$s" "$INTERVAL_S"; else printf '%s = false\n' "$s"; fi
    done
    printf '[listener]\nurl = "http://127.0.0.1:%s/ingest/postgres"\ntoken = "t"\n' "$PORT"
  } > "$W/$src.toml"
  DB=postgres sql -c "select pg_stat_statements_reset()" >/dev/null
  "$AGENT" run -c "$W/$src.toml" --log-format json 2>"$W/$src.log" & APID=$!
  # SIGUSR1 (status dump) only once the agent handles it.
  for _ in $(seq 1 100); do grep -q '"agent_started"' "$W/$src.log" 2>/dev/null && break; sleep 0.1; done
  # The first cycle (a first tables pass reads every table in full) is measured apart.
  for _ in $(seq 1 200); do [ "$(cycles_of "$APID" "$W/state-$src/status.json")" -ge 1 ] && break; sleep 0.2; done
  first=$(agent_ms)
  DB=postgres sql -c "select pg_stat_statements_reset()" >/dev/null
  c0=$(cycles_of "$APID" "$W/state-$src/status.json")
  sleep "$RUN_S"
  c1=$(cycles_of "$APID" "$W/state-$src/status.json")
  ms=$(agent_ms)
  hwm=$(awk '/VmHWM/ {printf "%.1f MB", $2 / 1024}' "/proc/$APID/status")
  kill "$APID"; wait "$APID" 2>/dev/null || true
  per=$(python3 -c "import sys; c=int(sys.argv[2]); print(round(float(sys.argv[1]) / c, 1) if c else '-')" "$ms" "$((c1 - c0))")
  printf '%-16s %14s %8s %18s %16s\n' "$src" "$first" "$((c1 - c0))" "$per" "$hwm"
done
echo "(${DBS} databases × ${TABLES} tables; each source alone every ${INTERVAL_S} s for ${RUN_S} s; PostgreSQL $("$BIN/postgres" -V | awk '{print $3}'))"
