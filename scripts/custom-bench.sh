#!/usr/bin/env bash
# Measures what a [[custom]] query that returns a million rows costs the agent (run from
# the project root after cargo build --release, as root): PG15, the agent on a 1 s
# interval with the query capped at max_rows = 1000, for SECS seconds (default 30); then
# the same without the query. Prints the agent's peak and final RSS and the runs' times.
set -u
BIN=/usr/lib/postgresql/15/bin; W=$(mktemp -d /tmp/custombench.XXXX); PORT=55611; LPORT=18611
AGENT=${AGENT:-target/release/postgres-agent}
chmod 755 $W; mkdir -p $W/pg; chown nobody $W/pg
as() { su nobody -s /bin/bash -c "$*"; }
as "$BIN/initdb -D $W/pg/data -U postgres --auth=trust >/dev/null"
printf "port = $PORT\nlisten_addresses = ''\nunix_socket_directories = '$W/pg'\n" >> $W/pg/data/postgresql.conf
as "$BIN/pg_ctl -D $W/pg/data -l $W/pg/log -w start >/dev/null"
python3 ${LISTENER:-../shared/contract/listener.py} $LPORT $W/recv.jsonl tok $W/mode 2>/dev/null & LPID=$!
run() { # $1: label, $2: extra config
  rm -rf $W/state; mkdir -p $W/state
  cat > $W/agent.toml <<TOML
[agent]
project_id = "bench"
state_dir = "$W/state"
[database]
host = "$W/pg"
port = $PORT
user = "postgres"
dbname = "postgres"
[collection]
interval_s = 1
logs = false
[listener]
url = "http://127.0.0.1:$LPORT/ingest/postgres"
token = "tok"
$2
TOML
  : > $W/recv.jsonl
  $AGENT run -c $W/agent.toml > $W/agent.out 2>&1 & APID=$!
  sleep ${SECS:-30}
  echo "$1: $(grep -E 'VmHWM|VmRSS' /proc/$APID/status | tr -s ' \n' ' ')"
  kill $APID; wait $APID 2>/dev/null
}
run "with the million-row query" '[[custom]]
name = "big"
query = "select g, repeat(md5(g::text), 4) as padding from generate_series(1, 1000000) g"
max_rows = 1000'
python3 - $W/recv.jsonl <<'PY'
import json, sys
took = []
for l in open(sys.argv[1]):
    for e in (json.loads(l).get("body") or {}).get("events", []):
        d = e.get("data", {})
        if e.get("kind") == "pg_custom" and d.get("record") == "run":
            took.append((d["took_ms"], d["rows"], d["truncated"]))
took.sort()
if took:
    print("runs", len(took), "rows", took[0][1], "truncated", took[0][2], "median_ms", round(took[len(took)//2][0], 1), "max_ms", round(took[-1][0], 1))
PY
run "without it" ""
kill $LPID
as "$BIN/pg_ctl -D $W/pg/data -m fast stop >/dev/null"
