# Shared by the measurement scripts (overhead.sh, health-cost.sh, bench-peers.sh):
# a throwaway PostgreSQL cluster in a work directory, run as an unprivileged user when
# the script runs as root, torn down (with every process the script started) on exit.
#   . scripts/lib/bench.sh; bench_init NAME; bench_cluster [EXTRA postgresql.conf lines]
# After bench_init: $W (work directory), $BIN (server binaries), $PSQL, $AGENT (release
# binary, built), as_pg CMD, sql ARGS…, pids+=(PID) to have a process killed at exit.
# shellcheck shell=bash

BIN=${PG_BIN:-$(scripts/pg-bin.sh 15)}
PSQL=$(scripts/pg-bin.sh psql)
pids=()

as_pg() { if [ "$(id -u)" = 0 ]; then su nobody -s /bin/bash -c "$*"; else bash -c "$*"; fi; }

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Idle sessions read a FIFO whose only writer is $HOLD: ending it ends them all.
  [ -n "${HOLD:-}" ] && kill "$HOLD" 2>/dev/null || true
  as_pg "$BIN/pg_ctl -D $W/data -m immediate -w stop >/dev/null 2>&1" || true
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}

bench_init() {
  # Cargo's own progress (crates compiled of how many) on the terminal: a clean release
  # build takes minutes (one LLVM module for the whole program) and must not look hung.
  echo "== building the release binary (a clean build takes about 6 minutes on 2 cores)" >&2
  cargo build --release >&2
  AGENT=$PWD/target/release/postgres-agent
  W=$(mktemp -d "/tmp/pgagent-$1.XXXX"); chmod 777 "$W"
  trap bench_cleanup EXIT
}

sql() { "$PSQL" -X -q -A -t -h "$W" -U postgres -d "${DB:-postgres}" "$@"; }

# Starts a cluster in $W/data listening on the socket directory $W (port 5432) with
# pg_stat_statements loaded; extra postgresql.conf lines come from stdin if given.
# $HBA_FIRST: pg_hba.conf lines put before the others; $IDENT: pg_ident.conf lines.
bench_cluster() {
  as_pg "$BIN/initdb -D $W/data -U postgres --auth=trust --no-sync >/dev/null"
  if [ -n "${HBA_FIRST:-}" ]; then
    { echo "$HBA_FIRST"; cat "$W/data/pg_hba.conf"; } > "$W/hba.tmp"
    cat "$W/hba.tmp" > "$W/data/pg_hba.conf"
  fi
  [ -z "${IDENT:-}" ] || echo "$IDENT" >> "$W/data/pg_ident.conf"
  {
    cat <<CONF
port = 5432
listen_addresses = ''
unix_socket_directories = '$W'
shared_preload_libraries = 'pg_stat_statements'
fsync = off
CONF
    [ -t 0 ] || cat
  } >> "$W/data/postgresql.conf"
  as_pg "$BIN/pg_ctl -D $W/data -l $W/server.log -w start >/dev/null"
  sql -c "create extension pg_stat_statements; create role postgres_agent login; grant pg_monitor to postgres_agent;" >/dev/null
}

# The busy-looking server of overhead.sh: 100 tables × 50 query shapes = 5,000 distinct
# statements in pg_stat_statements; $W/workload.sql touches 200 of them.
bench_statements() {
  python3 - "$W" <<'PY'
import sys
w = sys.argv[1]
cols = ", ".join(f"c{k} int" for k in range(10))
with open(f"{w}/setup.sql", "w") as f, open(f"{w}/workload.sql", "w") as g:
    for i in range(100):
        f.write(f"create table t{i} ({cols}); insert into t{i} select g,g,g,g,g,g,g,g,g,g from generate_series(1,20) g;\n")
    for i in range(100):
        for s in range(10):
            for w_ in range(5):
                q = f"select c{s} from t{i} where c{(s + w_ + 1) % 10} = 1;\n"
                f.write(q)
                if i < 4:
                    g.write(q)
PY
  sql -f "$W/setup.sql" >/dev/null
}

# N idle client connections (psql sessions reading a FIFO nobody writes to).
bench_idle() {
  mkfifo "$W/idle"
  sleep 36000 > "$W/idle" & HOLD=$!
  for _ in $(seq 1 "$1"); do
    "$PSQL" -X -q -h "$W" -U postgres -d postgres < "$W/idle" >/dev/null 2>&1 & pids+=($!)
  done
}

# The stand-in listener (answers 200); its port in $PORT. With an argument, the ids of
# the events it receives are appended to that file.
bench_listener() {
  python3 scripts/ok-listener.py "$W/port" "$@" >/dev/null 2>&1 & pids+=($!)
  for _ in $(seq 1 50); do [ -s "$W/port" ] && break; sleep 0.1; done
  PORT=$(cat "$W/port")
}

# utime+stime of a process in milliseconds.
cpu_ms() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) * 1000 / t}' "/proc/$1/stat"; }
# VmRSS / VmHWM of a process in kB.
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# Waits SECONDS while reading a process's VmRSS once a second; prints the median in MB
# with one decimal: what it holds between its bursts, not at whichever instant the
# wait ended (a source running every 60 s lifts RSS by 2–3 MB for a few seconds).
rss_steady() {
  local f; f=$(mktemp)
  for _ in $(seq 1 "$2"); do sleep 1; rss_kb "$1" >> "$f"; done
  sort -n "$f" | awk '{v[NR] = $1} END {printf "%.1f\n", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) / 1024}'
  rm -f "$f"
}

# Server time (ms, exec + plan) and calls of a role's statements since the last reset.
role_server_ms() {
  sql -c "select coalesce(round(sum(total_exec_time + total_plan_time)::numeric, 1), 0) || ' ' || coalesce(sum(calls), 0) from pg_stat_statements where userid = (select oid from pg_roles where rolname = '$1')"
}
role_reset() {
  sql -c "select pg_stat_statements_reset((select oid from pg_roles where rolname = '$1'))" >/dev/null
}
