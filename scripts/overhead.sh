#!/usr/bin/env bash
# Measures what the agent costs on a server that looks busy: 200 idle connections,
# 5,000 distinct statements in pg_stat_statements, and a light workload that touches
# 200 of them every second. The agent runs every source but the log (interval 2 s) as a
# pg_monitor role; the server's own pg_stat_statements tells the agent's query time.
#   scripts/overhead.sh [SECONDS]      (default 40)
# SAMPLER=1: the session sampler alone (every SAMPLE_MS, default 1000) on 300
# connections of which 20 are active: server time and agent CPU per sample, RSS. With
# KEYS=many each statement runs under a new request id (thousands of keys per window,
# as many summaries shipped); by default each session keeps one. OTLP=1: the OTLP output
# too (to the same stand-in, which answers 200 to anything): what a second output costs.
# SMAPS=1: what the resident memory is at the end (code, heap, libraries, stacks).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_S=${1:-40}
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_init overhead
AGENT=${AGENT_BIN:-$AGENT}
printf 'max_connections = 350\npg_stat_statements.max = 10000\n' | bench_cluster
# 100 tables × 50 query shapes = 5,000 distinct statements.
bench_statements
entries=$(sql -c "select count(*) from pg_stat_statements")
echo "pg_stat_statements entries: $entries"
IDLE=200; [ -n "${SAMPLER:-}" ] && IDLE=280
bench_idle "$IDLE"
if [ -n "${SAMPLER:-}" ]; then
  # 20 active sessions; every statement (0.1-0.3 s) under a new request id.
  python3 - "$W" "${KEYS:-few}" <<'PY'
import sys, uuid, random
w, many = sys.argv[1], sys.argv[2] == "many"
random.seed(7)
for k in range(20):
    with open(f"{w}/active{k}.sql", "w") as f:
        f.write(f"set application_name = 'bitville-{uuid.uuid4()}';\n")
        for n in range(3000):
            if many:
                f.write(f"set application_name = 'bitville-{uuid.uuid4()}';\n")
            sleep = random.choice([0.1, 0.2, 0.3])
            if many:
                f.write(f"select pg_sleep({sleep}), c{n % 10} from t{n % 100} limit 1;\n")
            else:
                f.write(f"select pg_sleep({sleep});\n")
PY
  for k in $(seq 0 19); do
    ( while true; do sql -f "$W/active$k.sql" >/dev/null 2>&1; done ) & pids+=($!)
  done
else
  ( while true; do sql -f "$W/workload.sql" >/dev/null; sleep 1; done ) & pids+=($!)
fi

bench_listener
sleep 2
echo "connections: $(sql -c "select count(*) from pg_stat_activity where backend_type = 'client backend'")"
sql -c "select pg_stat_statements_reset((select oid from pg_roles where rolname = 'postgres_agent'))" >/dev/null 2>&1 || true

cat > "$W/agent.toml" <<TOML
[agent]
project_id = "overhead"
state_dir = "$W/state"
[database]
host = "$W"
user = "postgres_agent"
[collection]
$(if [ -n "${SAMPLER:-}" ]; then
  printf 'activity = false\nstatements = false\nlocks = false\nsystem = false\nsample_interval_ms = %s\nactivity_interval_s = 60\n' "${SAMPLE_MS:-1000}"
else
  printf 'interval_s = 2\nsample_interval_ms = 0\n'
  printf '%s = false\n' databases tables vacuum_progress horizon replication server_stats settings
  # ONLY=activity|statements|locks|system: that source alone (what each costs).
  if [ -n "${ONLY:-}" ]; then
    for s in activity statements locks system; do [ "$s" = "$ONLY" ] || echo "$s = false"; done
  fi
fi)
logs = false
[listener]
url = "http://127.0.0.1:$PORT/ingest/postgres"
token = "t"
$(if [ -n "${OTLP:-}" ]; then printf '[otlp]\nendpoint = "http://127.0.0.1:%s"\n' "$PORT"; fi)
TOML
"$AGENT" run -c "$W/agent.toml" --log-format json 2>"$W/agent.log" & APID=$!; pids+=($APID)
# WARM_S (default 10 with SAMPLER, else 0): measure from then on, start-up left out.
WARM_S=${WARM_S:-$([ -n "${SAMPLER:-}" ] && echo 10 || echo 0)}
ut0=0; st0=0; cyc0=0; wb0=0; ns0=0
# CPU time of the agent's live threads in nanoseconds (schedstat): the tick counts of
# /proc/<pid>/stat move in 10 ms steps, too coarse to compare two binaries per cycle.
thread_ns() { cat /proc/"$APID"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d", s}'; }
# Each live thread's CPU in ns, by name: "tid name ns" lines.
thread_each() { for t in /proc/"$APID"/task/*; do echo "${t##*/} $(tr ' ' _ <"$t/comm" 2>/dev/null) $(cut -d' ' -f1 "$t/schedstat" 2>/dev/null)"; done; }
if [ "$WARM_S" -gt 0 ]; then
  sleep "$WARM_S"
  read -r ut0 st0 < <(awk '{print $14, $15}' "/proc/$APID/stat")
  ns0=$(thread_ns)
  thread_each >"$W/threads0"
  wb0=$(awk '/^write_bytes/ {print $2}' "/proc/$APID/io")
  kill -USR1 "$APID"; sleep 0.5
  cyc0=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["children"]; print(min([v["detail"].get("cycles_total", 10**9) for k, v in c.items() if k.startswith(("pg_", "system")) and k != "pg_log"] or [0]))' "$W/state/status.json")
  sql -c "select pg_stat_statements_reset((select oid from pg_roles where rolname = 'postgres_agent'))" >/dev/null
fi
if [ -n "${PERF:-}" ]; then
  # PERF=1: where the agent's CPU goes (needs linux-perf).
  perf record -F "${PERF_HZ:-999}" --call-graph fp -p "$APID" -o "$W/perf.data" -- sleep "$RUN_S" >/dev/null 2>&1
  [ -n "${PERF_OUT:-}" ] && cp "$W/perf.data" "$PERF_OUT"
  perf report -i "$W/perf.data" --stdio --no-children --sort comm -g none 2>/dev/null | grep -E "^ +[0-9]" | head -12
  perf report -i "$W/perf.data" --stdio --children --sort sym -g none --percent-limit 4 2>/dev/null | grep -E "^ +[0-9]" | head -50
else
  sleep "$RUN_S"
fi
read -r ut st < <(awk '{print $14, $15}' "/proc/$APID/stat")
ns=$(thread_ns)
thread_each >"$W/threads1"; touch "$W/threads0"
wb=$(awk '/^write_bytes/ {print $2}' "/proc/$APID/io")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$APID/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$APID/status")
if [ -n "${SMAPS:-}" ]; then
  # SMAPS=1: what the resident memory is (code and libraries, heap, thread stacks).
  grep -E "^(Rss|Anonymous|Shared_Clean|Private_Clean|Private_Dirty):" "/proc/$APID/smaps_rollup"
  python3 - "/proc/$APID/smaps" <<'PY'
import sys, collections
by = collections.Counter(); name = None
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) > 1 and "-" in f[0] and ":" not in f[0]:
        name = f[5] if len(f) > 5 else "[anon]"
    elif f and f[0] == "Rss:":
        by[name] += int(f[1])
for k, v in by.most_common(8):
    print(f"  {v / 1024:6.1f} MB  {k}")
PY
  echo "threads: $(ls "/proc/$APID/task" | wc -l)"
fi
kill -USR1 "$APID"; sleep 1
tck=$(getconf CLK_TCK)
python3 - "$W/state/status.json" "$((ut - ut0))" "$((st - st0))" "$tck" "$rss" "${SAMPLER:-}" "$cyc0" "$hwm" "$((ns - ns0))" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
hwm = int(sys.argv[8])
ut, st, tck, rss = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
c = s["children"]
names = ("pg_activity_summary",) if sys.argv[6] else ("pg_activity", "pg_statements", "pg_locks", "system")
names = [k for k in names if k in c]
cycles = {k: c[k]["detail"]["cycles_total"] - int(sys.argv[7]) for k in names if k in c}
if not cycles:
    # SAMPLE_MS=0: no source at all, the agent's floor.
    print(f"agent CPU with no source: {(ut + st) * 1000 / tck:.0f} ms; RSS {rss / 1024:.1f} MB")
    open("/tmp/pgagent-overhead.cycles", "w").write("1")
    sys.exit(0)
n = min(cycles.values())
print(f"cycles per source: {cycles}")
unit = "sample" if sys.argv[6] else "cycle of all sources"
print(f"agent CPU: {(ut + st) * 1000 / tck:.0f} ms over {n} cycles = {(ut + st) * 1000 / tck / n:.2f} ms per {unit}"
      f" (threads, to the ns: {int(sys.argv[9]) / 1e6 / n:.2f} ms)")
print(f"agent RSS: {rss / 1024:.1f} MB (peak {hwm / 1024:.1f} MB)")
print(f"events shipped: {c['shipper']['detail']['events_sent_total']}")
open("/tmp/pgagent-overhead.cycles", "w").write(str(n))
PY
n=$(cat /tmp/pgagent-overhead.cycles)
# Where the CPU per cycle went, thread by thread (threads started after the warm-up
# count from zero).
python3 - "$W/threads0" "$W/threads1" "$n" <<'PY'
import sys, collections
before = {l.split()[0]: int(l.split()[2]) for l in open(sys.argv[1]) if len(l.split()) == 3}
by = collections.Counter()
for l in open(sys.argv[2]):
    f = l.split()
    if len(f) == 3:
        by[f[1]] += int(f[2]) - before.get(f[0], 0)
n = max(int(sys.argv[3]), 1)
print("agent CPU per cycle by thread: " + ", ".join(f"{k} {v / 1e6 / n:.2f} ms" for k, v in by.most_common() if v > 0))
PY
# Bytes the agent made the disk write (spool, WAL, status file), per cycle.
echo "agent disk writes: $(( (wb - wb0) / 1024 / (n > 0 ? n : 1) )) KB per cycle"
sql -c "select 'server time of the agent''s queries: ' || round(sum(total_exec_time + total_plan_time)::numeric / $n, 3) || ' ms per cycle (' || sum(calls) || ' calls in $n cycles)' from pg_stat_statements where userid = (select oid from pg_roles where rolname = 'postgres_agent')"
sql -c "select '  ' || round((total_exec_time / calls)::numeric, 3) || ' ms  ' || left(regexp_replace(query, '\s+', ' ', 'g'), 70) from pg_stat_statements where userid = (select oid from pg_roles where rolname = 'postgres_agent') order by total_exec_time desc limit 6"
