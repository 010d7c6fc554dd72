#!/usr/bin/env bash
# Shows the agent doing its job on this machine, no listener needed:
#   1. starts a throwaway PostgreSQL 15 cluster (unless DEMO_PGHOST/DEMO_PGPORT name one),
#   2. opens a session tagged the way the web application tags its requests,
#   3. prints one collection (`postgres-agent once`) as JSON lines,
#   4. runs the daemon for a few seconds with the listener unreachable, so you can see
#      events kept safe in the spool, the status dump, and a clean SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
# PostgreSQL 15: Debian's, else fetched (npm) by pg-bin.sh; any installed psql.
BIN=${PG_BIN:-$(scripts/pg-bin.sh 15)}
PSQL=$(scripts/pg-bin.sh psql)
# Cargo's own progress (crates compiled of how many) on the terminal: a clean release
# build takes minutes (one LLVM module for the whole program) and must not look hung.
echo "== building the release binary (a clean build takes about 6 minutes on 2 cores)" >&2
cargo build --release >&2
AGENT=$PWD/target/release/postgres-agent
W=$(mktemp -d /tmp/pgagent-demo.XXXX); chmod 777 "$W"
as_pg() { if [ "$(id -u)" = 0 ]; then su nobody -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
cleanup() {
  [ -n "${APID:-}" ] && kill -9 "$APID" 2>/dev/null || true
  exec 3>&- 2>/dev/null || true
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null || true
  [ -n "${SPID2:-}" ] && kill "$SPID2" 2>/dev/null || true
  [ -z "${DEMO_PGHOST:-}" ] && as_pg "$BIN/pg_ctl -D $W/data -m fast -w stop >/dev/null 2>&1" || true
  rm -rf "$W"
}
trap cleanup EXIT
if [ -n "${DEMO_PGHOST:-}" ]; then
  HOST=$DEMO_PGHOST; PORT=${DEMO_PGPORT:-5432}; USER_=${DEMO_PGUSER:-postgres}
else
  echo "== starting a throwaway PostgreSQL cluster in $W"
  as_pg "$BIN/initdb -D $W/data -U postgres --auth=trust --no-sync >/dev/null"
  printf "port = 5432\nlisten_addresses = ''\nunix_socket_directories = '%s'\nshared_preload_libraries = 'pg_stat_statements,auto_explain'\n" "$W" >> "$W/data/postgresql.conf"
  # Plans of statements slower than 200 ms, as check recommends them (JSON, no timing).
  printf "logging_collector = on\nlog_destination = 'csvlog'\nlog_directory = 'log'\nauto_explain.log_min_duration = '200ms'\nauto_explain.log_format = 'json'\nauto_explain.log_analyze = on\nauto_explain.log_timing = off\nauto_explain.log_buffers = on\n" >> "$W/data/postgresql.conf"
  as_pg "$BIN/pg_ctl -D $W/data -l $W/server.log -w start >/dev/null"
  HOST=$W; PORT=5432; USER_=postgres
  "$PSQL" -X -q -h "$HOST" -p "$PORT" -U postgres -d postgres \
    -c "create extension pg_stat_statements; create table orders (id int primary key, total int); insert into orders values (1, 10)"
fi
REQ=$(python3 -c 'import uuid; print(uuid.uuid4())')
REQ2=$(python3 -c 'import uuid; print(uuid.uuid4())')
echo "== web request $REQ holds a row lock and goes idle (application_name=bitville-$REQ)"
mkfifo "$W/session"
PGAPPNAME="bitville-$REQ" "$PSQL" -X -q -h "$HOST" -p "$PORT" -U "$USER_" -d postgres \
  < "$W/session" >/dev/null 2>&1 & SPID=$!
exec 3>"$W/session"   # the session lives while this end is open
echo "begin; update orders set total = total + 1 where id = 1;" >&3
sleep 0.5
echo "== web request $REQ2 wants the same row and waits (application_name=bitville-$REQ2)"
PGAPPNAME="bitville-$REQ2" "$PSQL" -X -q -h "$HOST" -p "$PORT" -U "$USER_" -d postgres \
  -c "update orders set total = total + 5 where id = 1 /* checkout */" >/dev/null 2>&1 & SPID2=$!
sleep 1
cat > "$W/agent.toml" <<TOML
[agent]
project_id = "demo"
state_dir = "$W/state"
shutdown_grace_s = 2
[database]
host = "$HOST"
port = $PORT
user = "$USER_"
[collection]
interval_s = 1
logs = false
[listener]
url = "http://127.0.0.1:9/ingest/postgres"
token = "demo-token"
retry_max_ms = 1000
TOML
echo
echo "== postgres-agent once: one collection of every source, as JSON lines (summarized here)"
"$AGENT" once -c "$W/agent.toml" --log-format text --log-level error | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line); d = e["data"]; k = e["kind"]
    if k == "pg_activity":
        print("%-13s pid=%-6s %-20s state=%-19s correlation_id=%s query=%r" % (k, d["pid"],
              (d["backend_type"] or "")[:20], d["state"], d["correlation_id"], (d["query"] or "")[:45]))
    elif k == "pg_locks":
        r = d["root_blockers"][0] if d["root_blockers"] else {}
        print("%-13s pid %s (correlation_id=%s) waits %.1fs for a %s on %s; root blocker pid %s is %r (correlation_id=%s)" % (k,
              d["blocked"]["pid"], d["blocked"]["correlation_id"], d["wait_s"] or 0, (d["lock"] or {}).get("mode"),
              (d["lock"] or {}).get("locktype"), r.get("pid"), r.get("state"), r.get("correlation_id")))
    elif k == "system":
        print("%-13s load %.2f, memory available %d MB, postgres: %s processes, %d MB RSS, data dir %s%% used" % (k,
              d["load"]["one"], (d["memory"]["available"] or 0) // 2**20, d["postgres"]["processes"],
              d["postgres"]["rss_bytes"] // 2**20, d["filesystem"]["used_pct"]))
    elif k == "pg_activity_summary":
        print("%-13s %s s %s%s correlation_id=%s query=%r" % (k, d["seconds"], d["state"],
              (" waiting on %s/%s" % (d["wait_event_type"], d["wait_event"])) if d["wait_event_type"] else "",
              d["correlation_id"], (d["query"] or "")[:45]))
    elif k == "pg_statements":
        print("%-13s %s: available=%s entries=%s (the first sample sets the baseline; deltas follow)" % (k,
              d["type"], d["available"], d["entries"]))
'
if [ -z "${DEMO_PGHOST:-}" ]; then
  REQ3=$(python3 -c 'import uuid; print(uuid.uuid4())')
  echo
  echo "== web request $REQ3 runs a slow report; auto_explain logs its plan, the agent reads it"
  PGAPPNAME="bitville-$REQ3" "$PSQL" -X -q -h "$HOST" -p "$PORT" -U "$USER_" -d postgres \
    -c "select o.id, count(*) from orders o cross join generate_series(1, 1000000) g group by o.id" >/dev/null
  sleep 0.5
  "$AGENT" parse-log -c "$W/agent.toml" --format csvlog "$W"/data/log/*.csv 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    p = d.get("plan")
    if not p or not d.get("correlation_id"):
        continue
    print("pg_log        %s ms, correlation_id=%s, statement=%r" % (d["duration_ms"], d["correlation_id"], d["statement"][:60]))
    def walk(n, depth):
        print("  %s%s%s  rows: estimated %s, actual %s x %s loops" % ("  " * depth, n["node_type"],
              (" on " + n["relation"]) if n.get("relation") else "", n.get("plan_rows"), n.get("actual_rows"), n.get("actual_loops")))
        for c in n.get("plans", []):
            walk(c, depth + 1)
    walk(p["root"], 0)
    m = p.get("worst_misestimate")
    if m:
        print("  worst misestimate: node %s (%s), %sx %s-estimated" % (m["node_id"], m["node_type"], m["factor"], m["direction"]))
'
fi
echo
echo "== postgres-agent run for 4 s with the listener unreachable: events wait in the spool"
"$AGENT" run -c "$W/agent.toml" --log-format text --log-level warning 2>"$W/agent.log" & APID=$!
sleep 4
kill -USR1 "$APID"; sleep 0.5
"$AGENT" status -c "$W/agent.toml"
kill -TERM "$APID"; wait "$APID"; echo "== SIGTERM: exit code $?"; APID=
echo "== first lines the agent logged (the listener is unreachable on purpose):"
head -n 4 "$W/agent.log"
