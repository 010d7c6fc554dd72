#!/usr/bin/env bash
# Measures pg_plans' planning time per cycle (run from the project root after cargo build
# --release, as root): PG15, pgbench tables, 24 distinct reading statements (joins, an
# aggregate) run by pgbench -M prepared, the agent planning the top 20 every 10 s.
set -u
BIN=/usr/lib/postgresql/15/bin; W=$(mktemp -d /tmp/planbench.XXXX); PORT=55601; LPORT=18601
AGENT=${AGENT:-target/release/postgres-agent}
chmod 755 $W; mkdir -p $W/state $W/pg; chown nobody $W/pg
as() { su nobody -s /bin/bash -c "$*"; }
as "$BIN/initdb -D $W/pg/data -U postgres --auth=trust >/dev/null"
printf "port = $PORT\nlisten_addresses = ''\nunix_socket_directories = '$W/pg'\nshared_preload_libraries = 'pg_stat_statements'\n" >> $W/pg/data/postgresql.conf
as "$BIN/pg_ctl -D $W/pg/data -l $W/pg/log -w start >/dev/null"
P="$BIN/psql -X -q -h $W/pg -p $PORT -U postgres -d postgres"
$P -c "create extension pg_stat_statements" >/dev/null
# The agent under a role of its own: it passes over its own role's statements.
$P -c "create role agent login superuser" >/dev/null
$BIN/pgbench -h $W/pg -p $PORT -U postgres -i -s 5 -q postgres >/dev/null 2>&1
: > $W/script.sql
echo '\set aid random(1, 500000)' >> $W/script.sql
echo '\set bid random(1, 5)' >> $W/script.sql
echo '\set tid random(1, 50)' >> $W/script.sql
more=""
for i in $(seq 1 8); do
  more="$more and aid > 0"
  echo "select abalance from pgbench_accounts where aid = :aid $more;" >> $W/script.sql
  echo "select a.aid, b.bbalance from pgbench_accounts a join pgbench_branches b using (bid) where a.aid = :aid ${more//aid/a.aid};" >> $W/script.sql
  echo "select t.tid, count(*) from pgbench_tellers t join pgbench_branches b using (bid) where b.bid = :bid ${more//aid/t.tid} group by t.tid;" >> $W/script.sql
done
python3 ${LISTENER:-../shared/contract/listener.py} $LPORT $W/recv.jsonl tok $W/mode & LPID=$!
cat > $W/agent.toml <<TOML
[agent]
project_id = "bench"
state_dir = "$W/state"
[database]
host = "$W/pg"
port = $PORT
user = "agent"
dbname = "postgres"
[collection]
interval_s = 10
logs = false
[listener]
url = "http://127.0.0.1:$LPORT/ingest/postgres"
token = "tok"
TOML
$AGENT run -c $W/agent.toml > $W/agent.out 2>&1 & APID=$!
$BIN/pgbench -h $W/pg -p $PORT -U postgres -n -M prepared -c 2 -T ${SECS:-95} -f $W/script.sql postgres > $W/pgbench.out 2>&1
kill $APID; wait $APID 2>/dev/null; kill $LPID
python3 - $W/recv.jsonl <<'PY'
import json, sys
s = []
for l in open(sys.argv[1]):
    r = json.loads(l)
    for e in (r.get("body") or {}).get("events", []):
        if e.get("kind") == "pg_plans" and e["data"].get("record") == "summary":
            s.append(e["data"])
for d in s:
    print(d["candidates"], d["planned"], d.get("refused"), d["failed"], round(d["spent_ms"], 1), d.get("last_error"))
spent = sorted(d["spent_ms"] for d in s if d["planned"])
if spent:
    print("cycles", len(spent), "median_ms", round(spent[len(spent)//2], 1), "max_ms", round(spent[-1], 1))
PY
$P -c "select left(query, 70), calls from pg_stat_statements order by total_exec_time desc limit 20"
# The server's own time for the agent's planning statements (EXPLAIN, PREPARE, DEALLOCATE
# and the transaction around them), per planning cycle.
CYCLES=$(python3 - $W/recv.jsonl <<'PY'
import json, sys
n = 0
for l in open(sys.argv[1]):
    for e in (json.loads(l).get("body") or {}).get("events", []):
        if e.get("kind") == "pg_plans" and e["data"].get("record") == "summary" and e["data"]["planned"]:
            n += 1
print(n)
PY
)
$P -c "select left(query, 60), calls, round(total_exec_time::numeric, 2) exec_ms, round(total_plan_time::numeric, 2) plan_ms from pg_stat_statements where userid = 'agent'::regrole order by total_exec_time desc limit 12"
$P -At -c "select 'server ms per cycle', round((sum(total_exec_time + total_plan_time) / $CYCLES)::numeric, 2), 'statements', sum(calls) / $CYCLES from pg_stat_statements where userid = 'agent'::regrole and (query ilike 'explain%' or query ilike 'prepare%' or query ilike 'deallocate%' or query ilike 'begin%' or query ilike 'set local%' or query ilike 'rollback%' or query ilike 'select coalesce(cardinality(parameter_types)%')"
as "$BIN/pg_ctl -D $W/pg/data -m fast stop >/dev/null"
