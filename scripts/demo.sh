#!/usr/bin/env bash
# Shows the agent doing its job on this machine, no listener needed:
#   1. starts a throwaway PostgreSQL 15 cluster (unless DEMO_PGHOST/DEMO_PGPORT name one),
#   2. opens a session tagged the way the web application tags its requests,
#   3. prints one collection (`postgres-agent once`) as JSON lines,
#   4. runs the daemon for a few seconds with the listener unreachable, so you can see
#      events kept safe in the spool, the status dump, and a clean SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cargo build --release --quiet
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
  printf "port = 5432\nlisten_addresses = ''\nunix_socket_directories = '%s'\nshared_preload_libraries = 'pg_stat_statements'\n" "$W" >> "$W/data/postgresql.conf"
  as_pg "$BIN/pg_ctl -D $W/data -l $W/server.log -w start >/dev/null"
  HOST=$W; PORT=5432; USER_=postgres
  "$BIN/psql" -X -q -h "$HOST" -p "$PORT" -U postgres -d postgres \
    -c "create extension pg_stat_statements; create table orders (id int primary key, total int); insert into orders values (1, 10)"
fi
REQ=$(python3 -c 'import uuid; print(uuid.uuid4())')
REQ2=$(python3 -c 'import uuid; print(uuid.uuid4())')
echo "== web request $REQ holds a row lock and goes idle (application_name=bitville-$REQ)"
mkfifo "$W/session"
PGAPPNAME="bitville-$REQ" "$BIN/psql" -X -q -h "$HOST" -p "$PORT" -U "$USER_" -d postgres \
  < "$W/session" >/dev/null 2>&1 & SPID=$!
exec 3>"$W/session"   # the session lives while this end is open
echo "begin; update orders set total = total + 1 where id = 1;" >&3
sleep 0.5
echo "== web request $REQ2 wants the same row and waits (application_name=bitville-$REQ2)"
PGAPPNAME="bitville-$REQ2" "$BIN/psql" -X -q -h "$HOST" -p "$PORT" -U "$USER_" -d postgres \
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
echo
echo "== postgres-agent run for 4 s with the listener unreachable: events wait in the spool"
"$AGENT" run -c "$W/agent.toml" --log-format text --log-level warning 2>"$W/agent.log" & APID=$!
sleep 4
kill -USR1 "$APID"; sleep 0.5
"$AGENT" status -c "$W/agent.toml"
kill -TERM "$APID"; wait "$APID"; echo "== SIGTERM: exit code $?"; APID=
echo "== first lines the agent logged (the listener is unreachable on purpose):"
head -n 4 "$W/agent.log"
