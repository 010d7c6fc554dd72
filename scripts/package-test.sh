#!/usr/bin/env bash
# The Debian package, installed on this machine the way an administrator would (root):
#   scripts/package-test.sh
# Builds postgres-agent_<version>-1 and -2 with cargo-deb, installs -1 (files, owners,
# modes, the service user in group adm, the unit neither enabled nor started), runs
# `postgres-agent check` as the service user against a throwaway cluster it reaches by
# peer authentication over the socket and whose log it reads through group adm, spools
# events while the listener is down, upgrades to -2 (the edited config and every spooled
# event kept), delivers them all under strace (every system call the agent made is one
# the unit's SystemCallFilter allows), checks the unit's `systemd-analyze security`
# exposure (≤ 1.5), removes (config and spool kept) and purges (nothing left).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "package-test: needs root (dpkg -i, adduser)" >&2; exit 77; }
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
ok() { echo "package-test: ok: $*"; }

state=$(dpkg-query -W -f '${db:Status-Status}' postgres-agent 2>/dev/null || true)
if [ -n "$state" ] && [ "$state" != not-installed ]; then
  fail "postgres-agent is already on this machine ($state); the test would replace it — dpkg --purge it first"
fi
need_apt=()
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v strace >/dev/null || need_apt+=(strace)
command -v adduser >/dev/null || need_apt+=(adduser)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0

# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_init package
purge_on_exit() {
  pkill -KILL -u postgres-agent 2>/dev/null || true
  if dpkg-query -W -f '${db:Status-Status}' postgres-agent 2>/dev/null | grep -qv not-installed; then
    dpkg --purge postgres-agent >/dev/null 2>&1 || true
  fi
  bench_cleanup
}
trap purge_on_exit EXIT

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
cargo deb --no-build --deb-revision 1 --output "$W/v1.deb" >/dev/null
cargo deb --no-build --deb-revision 2 --output "$W/v2.deb" >/dev/null
ok "built postgres-agent_${version}-1 and -2"

# -- install ------------------------------------------------------------------------
# As if the agent had been run by hand as root before the package came: the state
# directory is root's, 0755, with a root-owned spool in it. The postinst repairs both.
rm -rf /var/lib/postgres-agent
install -d -m 0755 /var/lib/postgres-agent
touch /var/lib/postgres-agent/spool.db
dpkg -i "$W/v1.deb" >/dev/null || { apt-get install -y -qq -f >/dev/null; dpkg -i "$W/v1.deb" >/dev/null; }
[ "$(dpkg-query -W -f '${Version}' postgres-agent)" = "${version}-1" ] || fail "installed version"
expect_stat() { # path "mode owner:group"
  local got; got=$(stat -c '%a %U:%G' "$1" 2>/dev/null) || fail "$1 missing"
  [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
}
expect_stat /usr/bin/postgres-agent "755 root:root"
expect_stat /etc/postgres-agent "750 root:postgres-agent"
expect_stat /etc/postgres-agent/agent.toml "640 root:postgres-agent"
expect_stat /var/lib/postgres-agent "700 postgres-agent:postgres-agent"
expect_stat /var/lib/postgres-agent/spool.db "644 postgres-agent:postgres-agent"
rm /var/lib/postgres-agent/spool.db
expect_stat /usr/lib/systemd/system/postgres-agent.service "644 root:root"
for f in README.md changelog.gz copyright ARCHITECTURE.md; do
  [ -s "/usr/share/doc/postgres-agent/$f" ] || fail "/usr/share/doc/postgres-agent/$f missing"
done
cmp -s conf/agent.toml /etc/postgres-agent/agent.toml || fail "installed config differs from conf/agent.toml"
grep -qx /etc/postgres-agent/agent.toml /var/lib/dpkg/info/postgres-agent.conffiles || fail "agent.toml is not a conffile"
id postgres-agent >/dev/null || fail "no postgres-agent user"
[ "$(getent passwd postgres-agent | cut -d: -f7)" = /usr/sbin/nologin ] || fail "service user has a login shell"
id -nG postgres-agent | tr ' ' '\n' | grep -qx adm || fail "postgres-agent is not in group adm"
[ ! -e /etc/systemd/system/multi-user.target.wants/postgres-agent.service ] || fail "unit enabled at install (no listener configured yet)"
postgres-agent --version >/dev/null || fail "postgres-agent --version"
ok "files, owners and modes; user postgres-agent in adm; unit installed, not enabled"

# -- the unit ------------------------------------------------------------------------
exposure=$(systemd-analyze security --offline=yes /usr/lib/systemd/system/postgres-agent.service 2>/dev/null |
  sed -n 's/.*Overall exposure level for postgres-agent.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security gave no exposure level"
python3 -c "import sys; sys.exit(0 if float('$exposure') <= 1.5 else 1)" ||
  fail "unit exposure $exposure > 1.5 (systemd-analyze security --offline=yes)"
ok "unit exposure $exposure (≤ 1.5)"

# -- a cluster the service user reaches as the README says -----------------------------
# Peer authentication over the socket: OS user postgres-agent logs in as role
# postgres_agent. The server log is group adm and 0640, as Debian's is.
mkdir -p "$W/pglog"; chown nobody:adm "$W/pglog"; chmod 2750 "$W/pglog"
HBA_FIRST="local all postgres_agent peer map=agent" IDENT="agent postgres-agent postgres_agent" \
  bench_cluster <<CONF
logging_collector = on
log_directory = '$W/pglog'
log_file_mode = 0640
log_line_prefix = '%m [%p] %q%u@%d %a '
log_connections = on
CONF
bench_listener "$W/ids"
LISTENER_PORT=$PORT

# The administrator's edits of the conffile (kept across the upgrade), the Prometheus
# endpoint on too.
METRICS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -i -e 's|^project_id = .*|project_id = "package-test"|' \
  -e "s|^host = \"/var/run/postgresql\"|host = \"$W\"|" \
  -e "s|^url = .*|url = \"http://127.0.0.1:$LISTENER_PORT/ingest/postgres\"|" \
  -e 's|^token = ""|token = "package-test-token"|' \
  -e "s|^listen = \"\"|listen = \"127.0.0.1:$METRICS_PORT\"|" /etc/postgres-agent/agent.toml
grep -q "^host = \"$W\"" /etc/postgres-agent/agent.toml || fail "config edit"
cp /etc/postgres-agent/agent.toml "$W/edited.toml"

# The service user with its groups (adm), as systemd starts it; exec'd, no parent left.
as_agent() { setpriv --reuid=postgres-agent --regid=postgres-agent --init-groups -- "$@"; }
if ! as_agent postgres-agent check -c /etc/postgres-agent/agent.toml > "$W/check.out" 2>&1; then
  cat "$W/check.out" >&2; fail "postgres-agent check as the service user"
fi
grep -q "log" "$W/check.out" || fail "check said nothing of the log"
ok "postgres-agent check as postgres-agent: exit 0"

# `check` as root, as the README's first steps run it: judged for the service user, and
# nothing of the service's is created or changed. Without the directory it creates
# nothing either.
postgres-agent check -c /etc/postgres-agent/agent.toml > "$W/check-root.out" 2>&1 || true
grep -q "state_dir .*writable by user postgres-agent (the service's" "$W/check-root.out" ||
  { cat "$W/check-root.out" >&2; fail "check as root did not judge the state directory for the service user"; }
expect_stat /var/lib/postgres-agent "700 postgres-agent:postgres-agent"
[ -z "$(ls -A /var/lib/postgres-agent)" ] || fail "check as root left files in /var/lib/postgres-agent"
mv /var/lib/postgres-agent "$W/state-aside"
postgres-agent check -c /etc/postgres-agent/agent.toml > "$W/check-root.out" 2>&1 || true
[ ! -e /var/lib/postgres-agent ] || fail "check as root created /var/lib/postgres-agent"
grep -q "sudo install -d -o postgres-agent -g postgres-agent -m 0700 /var/lib/postgres-agent" "$W/check-root.out" ||
  { cat "$W/check-root.out" >&2; fail "check without the state directory did not print the command that makes it"; }
mv "$W/state-aside" /var/lib/postgres-agent
# A token file only root may read: root reads it, the service would not start.
printf 'package-test-token\n' > "$W/token"; chmod 0600 "$W/token"
sed -e 's|^token = .*|token = ""|' -e "s|^# token_file = .*|token_file = \"$W/token\"|" \
  /etc/postgres-agent/agent.toml > "$W/token-file.toml"
grep -q "^token_file = \"$W/token\"" "$W/token-file.toml" || fail "token_file edit"
postgres-agent check -c "$W/token-file.toml" > "$W/check-root.out" 2>&1 || true
grep -q "FAIL  files     listener.token_file: permission denied: user postgres-agent may not read $W/token" "$W/check-root.out" ||
  { cat "$W/check-root.out" >&2; fail "check as root did not say the service user cannot read the token file"; }
grep -q "fix: sudo chgrp postgres-agent $W/token && sudo chmod g+r $W/token" "$W/check-root.out" ||
  { cat "$W/check-root.out" >&2; fail "check as root did not print the token file's fix"; }
sed -i "s|^listen = .*|listen = \"127.0.0.1:80\"|" "$W/token-file.toml"
postgres-agent check -c "$W/token-file.toml" > "$W/check-root.out" 2>&1 || true
grep -q "FAIL  metrics   user postgres-agent cannot listen on 127.0.0.1:80" "$W/check-root.out" ||
  { cat "$W/check-root.out" >&2; fail "check as root did not say the service cannot listen below 1024"; }
ok "check as root: judged for postgres-agent, nothing created or changed, a token file and a port it cannot use named"

# -- events spooled while the listener is down ------------------------------------------
sed -i "s|^url = .*|url = \"http://127.0.0.1:9/ingest/postgres\"|" /etc/postgres-agent/agent.toml
# setpriv execs the agent: $! is its pid.
setpriv --reuid=postgres-agent --regid=postgres-agent --init-groups -- \
  postgres-agent run -c /etc/postgres-agent/agent.toml 2> "$W/run1.log" & APID=$!; pids+=($APID)
# Ten failing statements once the agent follows the log (it starts at its end): ten
# server log messages it must ship.
deadline=$((SECONDS + 60))
until grep -q '"msg":"log_file_opened"' "$W/run1.log"; do
  [ $SECONDS -lt $deadline ] || { cat "$W/run1.log" >&2; fail "the agent did not open the server log in 60 s"; }
  sleep 0.2
done
for k in $(seq 1 10); do sql -c "select 'package-test-marker-$k' || 1/0" >/dev/null 2>&1 || true; done
spooled() { # ids of the spooled events (KIND: only those of that kind)
  python3 - "${1:-}" <<'PY'
import sqlite3, sys
c = sqlite3.connect("file:/var/lib/postgres-agent/spool.db?mode=ro", uri=True)
kind = sys.argv[1]
q = "select id from events" + (" where kind = ?" if kind else "") + " order by seq"
print("\n".join(r[0] for r in c.execute(q, (kind,) if kind else ())))
PY
}
deadline=$((SECONDS + 60))
until [ "$(spooled pg_log | grep -c . || true)" -ge 10 ]; do
  [ $SECONDS -lt $deadline ] || { cat "$W/run1.log" >&2; fail "the ten log messages were not spooled in 60 s"; }
  sleep 0.5
done
kill -TERM "$APID"; rc=0; wait "$APID" || rc=$?
[ $rc = 0 ] || { tail -5 "$W/run1.log" >&2; fail "agent exit code $rc on SIGTERM"; }
spooled | sort > "$W/before.ids"
n=$(wc -l < "$W/before.ids")
ok "$n events spooled with the listener down"

# -- upgrade -------------------------------------------------------------------------
sed -i "s|^url = .*|url = \"http://127.0.0.1:$LISTENER_PORT/ingest/postgres\"|" /etc/postgres-agent/agent.toml
dpkg -i "$W/v2.deb" >/dev/null
[ "$(dpkg-query -W -f '${Version}' postgres-agent)" = "${version}-2" ] || fail "upgraded version"
cmp -s "$W/edited.toml" /etc/postgres-agent/agent.toml || fail "the upgrade changed the edited config"
expect_stat /etc/postgres-agent/agent.toml "640 root:postgres-agent"
expect_stat /var/lib/postgres-agent/spool.db "600 postgres-agent:postgres-agent"
spooled | sort > "$W/after.ids"
cmp -s "$W/before.ids" "$W/after.ids" || fail "the spool changed across the upgrade"
ok "upgrade to -2: config and the $n spooled events kept"

# -- delivery after the upgrade, every system call traced ---------------------------------
: > "$W/ids"
strace -f -qq -o "$W/strace" -- setpriv --reuid=postgres-agent --regid=postgres-agent --init-groups -- \
  postgres-agent run -c /etc/postgres-agent/agent.toml 2> "$W/run2.log" & SPID=$!; pids+=($SPID)
deadline=$((SECONDS + 90))
until [ -z "$(sort -u "$W/ids" | comm -23 "$W/before.ids" -)" ]; do
  [ $SECONDS -lt $deadline ] || { cat "$W/run2.log" >&2; fail "spooled events not delivered in 90 s"; }
  sleep 0.5
done
# A scrape of the endpoint (its system calls are traced too).
python3 - "$METRICS_PORT" <<'PY' || fail "metrics endpoint"
import sys, time, urllib.request
# The children's figures arrive with the supervisor's first pings after the start.
deadline = time.time() + 30
while True:
    text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
    if 'postgres_agent_shipper_breaker_state{output="listener",state="closed"} 1' in text:
        break
    assert time.time() < deadline, text
    time.sleep(0.5)
PY
sleep 3   # a few more cycles of every source, the log reader and the shipper
kill -TERM "$(pgrep -u postgres-agent -x postgres-agent)" || true
wait "$SPID" || fail "agent under strace: exit $?"
ok "all $n events spooled before the upgrade delivered after it"

# Every system call the agent's threads made (setpriv's own calls come before the
# agent's execve and are left out), against the unit's filter.
python3 - "$W/strace" /usr/lib/systemd/system/postgres-agent.service <<'PY' || fail "system call filter"
import re, subprocess, sys
trace, unit = sys.argv[1], sys.argv[2]
sets, cur = {}, None
for line in subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True).stdout.splitlines():
    s = line.strip()
    if not s or s.startswith("#"):
        continue
    if line.startswith("@"):
        cur = sets.setdefault(s, set())
    elif cur is not None:
        cur.add(s)
def expand(name, seen=()):
    out = set()
    for m in sets.get(name, ()):
        out |= expand(m, seen + (name,)) if m.startswith("@") and m not in seen else {m}
    return out
allow, deny = set(), set()
for line in open(unit):
    m = re.match(r"SystemCallFilter=(~?)(.*)", line.strip())
    if m:
        names = set()
        for n in m.group(2).split():
            names |= expand(n) if n.startswith("@") else {n}
        (deny if m.group(1) else allow).update(names)
allowed = allow - deny
# The agent's process from its execve on, and every thread it clones (a clone's return
# value is the new thread's id, on the line or on its "resumed" line).
agent, used = set(), {}
for line in open(trace):
    m = re.match(r"(\d+) +(?:<\.\.\. )?(\w+)", line)
    if not m:
        continue
    pid, call = m.groups()
    if call == "execve" and "/usr/bin/postgres-agent" in line and line.rstrip().endswith("= 0"):
        agent.add(pid)
        continue
    if pid not in agent:
        continue
    if not line[len(pid):].lstrip().startswith("<..."):
        used[call] = used.get(call, 0) + 1
    r = re.search(r"= (\d+)$", line.rstrip())
    if call in ("clone", "clone3") and r:
        agent.add(r.group(1))
if len(used) < 20:
    sys.exit(f"only {len(used)} distinct system calls traced: the trace missed the agent")
bad = sorted(c for c in used if c not in allowed)
if bad:
    sys.exit(f"calls the unit's filter refuses: {bad}")
print(f"package-test: ok: {sum(used.values())} system calls of {len(used)} kinds, all allowed by the unit's SystemCallFilter: {' '.join(sorted(used))}")
PY

# -- remove, then purge ----------------------------------------------------------------
dpkg -r postgres-agent >/dev/null
[ ! -e /usr/bin/postgres-agent ] || fail "binary left after remove"
[ ! -e /usr/lib/systemd/system/postgres-agent.service ] || fail "unit left after remove"
[ -f /etc/postgres-agent/agent.toml ] || fail "remove deleted the config"
[ -f /var/lib/postgres-agent/spool.db ] || fail "remove deleted the spool"
ok "remove: program gone, config and spool kept"
dpkg --purge postgres-agent >/dev/null
for p in /etc/postgres-agent /var/lib/postgres-agent /usr/share/doc/postgres-agent; do
  [ ! -e "$p" ] || fail "$p left after purge"
done
! getent passwd postgres-agent >/dev/null || fail "user postgres-agent left after purge"
! getent group postgres-agent >/dev/null || fail "group postgres-agent left after purge"
[ "$(dpkg-query -W -f '${db:Status-Status}' postgres-agent 2>/dev/null || echo not-installed)" = not-installed ] ||
  fail "dpkg still knows the package after purge"
ok "purge: config, state, user and group gone"

# -- a person's account of the same name is refused ------------------------------------
useradd -m -s /bin/bash postgres-agent
cleanup_person() { userdel -r postgres-agent >/dev/null 2>&1 || true; }
if out=$(dpkg -i "$W/v1.deb" 2>&1); then
  cleanup_person; fail "the package took over a person's account"
fi
echo "$out" | grep -q "an account named postgres-agent already exists" ||
  { cleanup_person; fail "no reason given: $out"; }
! id -nG postgres-agent | tr ' ' '\n' | grep -qx adm || { cleanup_person; fail "the person was added to adm"; }
[ "$(getent passwd postgres-agent | cut -d: -f7)" = /bin/bash ] || { cleanup_person; fail "the account was changed"; }
dpkg --purge postgres-agent >/dev/null 2>&1 || true
getent passwd postgres-agent >/dev/null || fail "purge removed a person's account"
cleanup_person
ok "a person's account named postgres-agent is refused with the reason, and kept"
echo "package-test: all ok"
