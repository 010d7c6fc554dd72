#!/usr/bin/env bash
# The database's metrics page (`[metrics] database`) beside postgres_exporter's scrape
# of the same server: 20,000 tables (4 databases of 5,000) and 500 statements. Per
# scrape: CPU of the scraped process, server time, bytes; and each one's memory.
#   scripts/bench-metrics.sh          (PostgreSQL 15; about 5 minutes)
#   SCRAPES=20 scripts/bench-metrics.sh
#   TABLES_MAX=1000 scripts/bench-metrics.sh   (tables_max_relations at its default)
#   DATABASE=false scripts/bench-metrics.sh    (the agent's memory without the page)
# Writes the table as Markdown to $OUT (default target/bench-metrics.md).
# Needs: prometheus-postgres-exporter (Debian), curl.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRAPES=${SCRAPES:-20}
TABLES_MAX=${TABLES_MAX:-5000}
EXPECTED=$(( (TABLES_MAX < 5000 ? TABLES_MAX : 5000) * 4 ))
OUT=${OUT:-target/bench-metrics.md}
for tool in prometheus-postgres-exporter curl; do
  command -v "$tool" >/dev/null || { echo "bench-metrics: $tool is missing (apt-get install prometheus-postgres-exporter curl)" >&2; exit 2; }
done
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_init metrics
bench_cluster <<CONF
max_locks_per_transaction = 1024
autovacuum = off
CONF
bench_listener
sql -c "create role exporter login; grant pg_monitor to exporter;" >/dev/null

echo "== 20,000 tables in 4 databases, 500 statements"
for d in 0 1 2 3; do
  sql -c "create database shop_$d" >/dev/null
  DB=shop_$d sql -c "do \$\$ begin for i in 1..5000 loop execute format('create table t%s (id int primary key, v int)', i); end loop; end \$\$;" >/dev/null
done
python3 -c "
for i in range(1, 501):
    print(f'select v from t{i} where id = 1;')
" > "$W/statements.sql"
DB=shop_0 sql -c "create extension pg_stat_statements" >/dev/null
DB=shop_0 sql -f "$W/statements.sql" >/dev/null

MPORT=19288
cat > "$W/agent.toml" <<TOML
[agent]
project_id = "bench"
state_dir = "$W/state"
[database]
host = "$W"
port = 5432
user = "postgres_agent"
dbname = "postgres"
[collection]
interval_s = 60
tables_interval_s = 600
tables_max_relations = $TABLES_MAX
tables_max_pass_s = 300
logs = false
[listener]
url = "http://127.0.0.1:$PORT/ingest"
[metrics]
listen = "127.0.0.1:$MPORT"
statements_limit = 500
database = ${DATABASE:-true}
TOML
"$AGENT" run -c "$W/agent.toml" 2>"$W/agent.log" & APID=$!; pids+=("$APID")
if [ "${DATABASE:-true}" = false ]; then
  # The agent without the page's readings: its memory with the same tables pass.
  for _ in $(seq 1 600); do
    curl -s "127.0.0.1:$MPORT/metrics" | grep -q '^postgres_agent_source_cycles_total{source="pg_tables"} [1-9]' && break
    sleep 1
  done
  echo "database = false: RSS steady $(rss_steady "$APID" 10) MB, peak $(( $(hwm_kb "$APID") / 1024 )) MB"
  exit 0
fi
echo "== waiting for the agent's first tables pass ($EXPECTED tables)"
for _ in $(seq 1 600); do
  n=$(curl -s "127.0.0.1:$MPORT/metrics" | grep -c '^pg_stat_user_tables_seq_scan{' || true)
  [ "$n" -ge "$EXPECTED" ] && break
  sleep 1
done
[ "$n" -ge "$EXPECTED" ] || { echo "bench-metrics: only $n tables on the page" >&2; exit 1; }
s=$(curl -s "127.0.0.1:$MPORT/metrics" | grep -c '^pg_stat_statements_calls_total{' || true)
echo "   page: $n tables, $s statements"

# Per scrape: the scraped process's CPU beyond what it spends idle over the same time,
# the server's CPU (every postgres process) the same way, the bytes.
server_cpu_ms() {
  local t=0 p
  for p in $(pgrep -x -u "$(stat -c %U "$W/data")" postgres || true); do
    t=$(awk -v t="$t" -v h="$(getconf CLK_TCK)" '{print t + ($14 + $15) * 1000 / h}' "/proc/$p/stat" 2>/dev/null || echo "$t")
  done
  echo "$t"
}
measure() { # pid url -> "cpu_ms_per_scrape server_ms_per_scrape bytes"
  local pid=$1 url=$2 c0 s0 t0 c1 s1 t1 c2 s2 bytes
  curl -s "$url" > "$W/page"; bytes=$(stat -c %s "$W/page")
  c0=$(cpu_ms "$pid"); s0=$(server_cpu_ms); t0=$(date +%s.%N)
  for _ in $(seq 1 "$SCRAPES"); do curl -s -o /dev/null "$url"; done
  c1=$(cpu_ms "$pid"); s1=$(server_cpu_ms); t1=$(date +%s.%N)
  sleep "$(python3 -c "print($t1 - $t0)")"
  c2=$(cpu_ms "$pid"); s2=$(server_cpu_ms)
  python3 -c "
n = $SCRAPES
print(f'{max(0, ($c1 - $c0) - ($c2 - $c1)) / n:.1f} {max(0, ($s1 - $s0) - ($s2 - $s1)) / n:.1f} $bytes')"
}
read -r a_cpu a_srv a_bytes < <(measure "$APID" "http://127.0.0.1:$MPORT/metrics")
a_rss=$(rss_steady "$APID" 10); a_hwm=$(( $(hwm_kb "$APID") / 1024 ))

echo "== postgres_exporter on the same server (default collectors, tables of the database it connects to)"
cat > "$W/queries.yaml" <<'YAML'
pg_stat_user_tables:
  query: "SELECT current_database() datname, schemaname, relname, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, n_live_tup, n_dead_tup, n_mod_since_analyze, COALESCE(last_vacuum, '1970-01-01Z') AS last_vacuum, COALESCE(last_autovacuum, '1970-01-01Z') AS last_autovacuum, COALESCE(last_analyze, '1970-01-01Z') AS last_analyze, COALESCE(last_autoanalyze, '1970-01-01Z') AS last_autoanalyze, vacuum_count, autovacuum_count, analyze_count, autoanalyze_count FROM pg_stat_user_tables"
  metrics:
    - datname: {usage: "LABEL", description: "db"}
    - schemaname: {usage: "LABEL", description: "schema"}
    - relname: {usage: "LABEL", description: "table"}
    - seq_scan: {usage: "COUNTER", description: "x"}
    - seq_tup_read: {usage: "COUNTER", description: "x"}
    - idx_scan: {usage: "COUNTER", description: "x"}
    - idx_tup_fetch: {usage: "COUNTER", description: "x"}
    - n_tup_ins: {usage: "COUNTER", description: "x"}
    - n_tup_upd: {usage: "COUNTER", description: "x"}
    - n_tup_del: {usage: "COUNTER", description: "x"}
    - n_tup_hot_upd: {usage: "COUNTER", description: "x"}
    - n_live_tup: {usage: "GAUGE", description: "x"}
    - n_dead_tup: {usage: "GAUGE", description: "x"}
    - n_mod_since_analyze: {usage: "GAUGE", description: "x"}
    - last_vacuum: {usage: "GAUGE", description: "x"}
    - last_autovacuum: {usage: "GAUGE", description: "x"}
    - last_analyze: {usage: "GAUGE", description: "x"}
    - last_autoanalyze: {usage: "GAUGE", description: "x"}
    - vacuum_count: {usage: "COUNTER", description: "x"}
    - autovacuum_count: {usage: "COUNTER", description: "x"}
    - analyze_count: {usage: "COUNTER", description: "x"}
    - autoanalyze_count: {usage: "COUNTER", description: "x"}
pg_statio_user_tables:
  query: "SELECT current_database() datname, schemaname, relname, heap_blks_read, heap_blks_hit, idx_blks_read, idx_blks_hit, toast_blks_read, toast_blks_hit, tidx_blks_read, tidx_blks_hit FROM pg_statio_user_tables"
  metrics:
    - datname: {usage: "LABEL", description: "db"}
    - schemaname: {usage: "LABEL", description: "schema"}
    - relname: {usage: "LABEL", description: "table"}
    - heap_blks_read: {usage: "COUNTER", description: "x"}
    - heap_blks_hit: {usage: "COUNTER", description: "x"}
    - idx_blks_read: {usage: "COUNTER", description: "x"}
    - idx_blks_hit: {usage: "COUNTER", description: "x"}
    - toast_blks_read: {usage: "COUNTER", description: "x"}
    - toast_blks_hit: {usage: "COUNTER", description: "x"}
    - tidx_blks_read: {usage: "COUNTER", description: "x"}
    - tidx_blks_hit: {usage: "COUNTER", description: "x"}
YAML
EPORT=19289
DATA_SOURCE_NAME="host=$W port=5432 user=exporter dbname=shop_0 sslmode=disable" \
  prometheus-postgres-exporter --web.listen-address="127.0.0.1:$EPORT" \
  --extend.query-path="$W/queries.yaml" 2>"$W/exporter.log" & EPID=$!; pids+=("$EPID")
for _ in $(seq 1 100); do curl -s -o /dev/null "127.0.0.1:$EPORT/metrics" && break; sleep 0.2; done
role_reset exporter
read -r e_cpu e_srv e_bytes < <(measure "$EPID" "http://127.0.0.1:$EPORT/metrics")
read -r e_ms e_calls < <(role_server_ms exporter)
e_rss=$(rss_steady "$EPID" 5); e_hwm=$(( $(hwm_kb "$EPID") / 1024 ))
e_tables=$(grep -c '^pg_stat_user_tables_seq_scan{' "$W/page" || true)

rows=(
  "tables on the page|$n (4 databases)|$e_tables (the database it connects to)"
  "statements on the page|$s|— (its stat_statements query fails on 13+)"
  "CPU of the scraped process, per scrape|$a_cpu ms|$e_cpu ms"
  "server CPU (all postgres processes), per scrape|$a_srv ms|$e_srv ms"
  "server time of its statements, per scrape (pg_stat_statements)|0 (no query)|$(python3 -c "print(round($e_ms / ($SCRAPES + 1), 1))") ms ($e_calls statements in $((SCRAPES + 1)) scrapes)"
  "bytes per scrape|$a_bytes|$e_bytes"
  "RSS steady / peak|$a_rss MB / $a_hwm MB|$e_rss MB / $e_hwm MB"
)
{
  echo "| $SCRAPES scrapes of each | agent | prometheus-postgres-exporter $(prometheus-postgres-exporter --version 2>&1 | head -1 | awk '{print $3}') |"
  echo "|---|---|---|"
  for r in "${rows[@]}"; do echo "| ${r//|/ | } |"; done
} | tee "$OUT"
