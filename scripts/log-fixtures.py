#!/usr/bin/env python3
"""Makes real servers write the messages the agent gives a subclass, in every format.

For each major version asked for (default 12-18), a throwaway cluster with data
checksums writes stderr, csvlog and (15+) jsonlog at once while this script provokes
connections, failed logins, errors of every kind, lock waits, a deadlock, timeouts,
temporary files, checkpoints, a failing archive command, autovacuum, a reload with a
broken file, a backend killed (crash and recovery), a corrupted page, a streaming
standby (restartpoints, promotion) and more. The logs land in
src/logs/subclass/fixtures/pg<N>[-standby].{log,csv,json}; the unit tests read them.

    scripts/log-fixtures.py            # 12..18 (about a minute each)
    scripts/log-fixtures.py 15 17      # some versions

Needs root or a user that may run PostgreSQL; the servers run as nobody when root.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "src", "logs", "subclass", "fixtures")
PREFIX = "%m [%p] %q%u@%d "


def sh(*args, **kw):
    return subprocess.run(args, check=kw.pop("check", True), capture_output=True, text=True, **kw)


def pg_bin(major):
    return sh(os.path.join(ROOT, "scripts", "pg-bin.sh"), str(major)).stdout.strip()


PSQL = None


def as_server(cmd, env=None):
    if os.geteuid() == 0:
        return ["su", "nobody", "-s", "/bin/bash", "-c", " ".join(cmd)]
    return cmd


class Cluster:
    def __init__(self, major, work, name, port):
        self.major, self.bin, self.port = major, pg_bin(major), port
        self.dir = os.path.join(work, name)
        self.data = os.path.join(self.dir, "data")
        self.sock = self.dir
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o777)

    def initdb(self):
        subprocess.run(as_server([f"{self.bin}/initdb", "-D", self.data, "-U", "postgres", "-k",
                                  "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]),
                       check=True, capture_output=True)

    def conf(self, text):
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(text + "\n")

    def start(self):
        r = subprocess.run(as_server([f"{self.bin}/pg_ctl", "-D", self.data, "-l",
                                      os.path.join(self.dir, "server.out"), "-w", "-t", "60", "start"]),
                           capture_output=True, text=True)
        if r.returncode != 0:
            out = open(os.path.join(self.dir, "server.out")).read()[-1000:]
            try:
                out += open(os.path.join(self.data, "log", "pg")).read()[-2000:]
            except OSError:
                pass
            raise RuntimeError(f"{self.data} did not start: {out}")

    def stop(self, mode="fast"):
        subprocess.run(as_server([f"{self.bin}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"]),
                       capture_output=True)

    def psql(self, sql, user="postgres", db="postgres", env=None, check=False, timeout=60):
        e = dict(os.environ, PGCONNECT_TIMEOUT="5", **(env or {}))
        return subprocess.run([PSQL, "-X", "-q", "-A", "-t", "-h", self.sock, "-p", str(self.port),
                               "-U", user, "-d", db, "-c", sql],
                              capture_output=True, text=True, env=e, check=check, timeout=timeout)

    def val(self, sql, **kw):
        return self.psql(sql, check=True, **kw).stdout.strip()

    def background(self, sql, user="postgres", db="postgres"):
        return subprocess.Popen([PSQL, "-X", "-q", "-h", self.sock, "-p", str(self.port), "-U", user,
                                 "-d", db, "-c", sql],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def step(name, f):
    try:
        f()
    except Exception as e:  # a step that fails leaves the others to run
        print(f"   step {name}: {e}", file=sys.stderr)


def provoke(c, major):
    q = c.psql
    q("create role lowpriv login; create role pwuser login password 'right';"
      "create role rejectme login; create role nologin_role nologin;"
      "create table t (id int primary key, v int); insert into t select g, g from generate_series(1, 100) g;"
      "create table parent (id int primary key); create table child (id int primary key, p int references parent);"
      "create table chk (v int check (v > 0)); create table nn (v int not null);"
      "create table ex (r int4range, exclude using gist (r with &&)); insert into ex values ('[1,5)');"
      "create table ser (id int primary key, v int); insert into ser values (1, 0);")
    # Logins that fail, and ones that succeed.
    q("select 1", user="nosuchrole")
    q("select 1", db="nosuchdb")
    q("select 1", user="rejectme")
    q("select 1", user="pwuser", env={"PGPASSWORD": "wrong"})
    q("select 1", user="nologin_role")
    q("select 1", user="pwuser", env={"PGPASSWORD": "right"})
    q("select 1", user="noentry")
    q("create role peeruser login")
    q("select 1", user="peeruser")
    # Errors, one of each kind.
    for sql in [
        "select 1/0", "select * from no_such_table", "select no_such_column from t",
        "select no_such_function()", "select 1::no_such_type", "select * from no_such_schema.t",
        "selec 1", "select 'x'::int", "select 2147483647 + 1", "select 'abc'::varchar(2)",
        "insert into t values (1, 1)", "insert into child values (1, 42)", "insert into chk values (-1)",
        "insert into nn values (null)", "insert into ex values ('[2,3)')",
        "insert into t values (1, 1) on conflict (v) do nothing",
        "set role nosuchrole", "drop database nosuchdb",
        "set transaction_read_only = on; insert into t values (1000, 1)",
        "begin; select 1/0; select 1; commit",
        "select pg_create_physical_replication_slot('s1'); select pg_create_physical_replication_slot('s1')",
        "select pg_drop_replication_slot('nosuchslot')",
        "set statement_timeout = 100; select pg_sleep(2)",
        "set temp_file_limit = '100kB'; set work_mem = '64kB'; select * from generate_series(1, 200000) g order by g desc limit 1",
    ]:
        q(sql)
    q("create table no_such_schema.x (a int)")
    q("create table vt (v varchar(2))")
    q("insert into vt values ('abc')")
    q("select convert_from('\\xff', 'UTF8')")
    q("set role lowpriv; select * from t")
    q("set role lowpriv; analyze t")
    q("set role lowpriv; alter table t add column x int")
    q("grant usage on schema public to lowpriv")
    # Temporary files, a slow statement, a statement logged, a plan.
    q("set work_mem = '64kB'; select * from generate_series(1, 200000) g order by g desc limit 1")
    q("select pg_sleep(0.3)")
    q("create table logged_ddl (a int)")
    q("load 'auto_explain'; set auto_explain.log_min_duration = 0; select count(*) from t")
    # A lock wait that ends, and a lock timeout.
    holder = c.background("begin; lock table t; select pg_sleep(0.6); commit")
    time.sleep(0.2)
    q("lock table t")
    holder.wait()
    holder = c.background("begin; lock table t; select pg_sleep(0.6); commit")
    time.sleep(0.2)
    q("set lock_timeout = 100; lock table t")
    q("begin; select * from t where id = 1 for update nowait; commit")
    holder.wait()
    holder = c.background("begin; lock table t; select pg_sleep(0.6); commit")
    time.sleep(0.2)
    q("vacuum (skip_locked) t")
    q("analyze (skip_locked) t")
    holder.wait()
    holder = c.background("begin; select * from t where id = 2 for update; select pg_sleep(0.5); commit")
    time.sleep(0.2)
    q("select * from t where id = 2 for update nowait")
    holder.wait()
    # A deadlock.
    a = c.background("begin; update t set v = 0 where id = 10; select pg_sleep(0.4); update t set v = 0 where id = 11; commit")
    time.sleep(0.1)
    q("begin; update t set v = 1 where id = 11; select pg_sleep(0.1); update t set v = 1 where id = 10; commit")
    a.wait()
    # A serialization failure.
    a = c.background("begin isolation level repeatable read; select * from ser; select pg_sleep(0.4); update ser set v = 1 where id = 1; commit")
    time.sleep(0.1)
    q("update ser set v = 2 where id = 1")
    a.wait()
    # A statement cancelled, a session terminated.
    a = c.background("select pg_sleep(5) /* cancel-me */")
    time.sleep(0.3)
    q("select pg_cancel_backend(pid) from pg_stat_activity where query like '%cancel-me%' and pid <> pg_backend_pid()")
    a.wait()
    a = c.background("select pg_sleep(5) /* kill-me */")
    time.sleep(0.3)
    q("select pg_terminate_backend(pid) from pg_stat_activity where query like '%kill-me%' and pid <> pg_backend_pid()")
    a.wait()
    # Sessions fed line by line: a transaction left idle, one whose client vanishes, one
    # that goes on after an error.
    def session(lines, then=None, wait=0.5):
        a = subprocess.Popen([PSQL, "-X", "-q", "-h", c.sock, "-p", str(c.port), "-U", "postgres"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        for line in lines:
            a.stdin.write(line + "\n")
            a.stdin.flush()
        time.sleep(wait)
        if then:
            then(a)
        a.kill()
        a.wait()
    session(["set idle_in_transaction_session_timeout = 100;", "begin;", "select 1;"])
    session(["begin;", "select 1;"], then=lambda a: os.kill(a.pid, 9), wait=0.3)
    session(["begin;", "select 1/0;", "select 1;", "rollback;"], wait=0.3)
    session(["set role lowpriv;", "vacuum t;"], wait=0.3)
    if major >= 14:
        a = subprocess.Popen([PSQL, "-X", "-q", "-h", c.sock, "-p", str(c.port), "-U", "postgres"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        a.stdin.write("set idle_session_timeout = 100;\n")
        a.stdin.flush()
        time.sleep(0.5)
        a.kill()
        a.wait()
    # Too many connections: the slots left for non-superusers, then every slot.
    sessions = []
    for _ in range(12):
        sessions.append(c.background("select pg_sleep(3)", user="lowpriv"))
    time.sleep(0.8)
    for _ in range(4):
        sessions.append(c.background("select pg_sleep(2)"))
    time.sleep(0.8)
    for s in sessions:
        s.wait()
    # What a client that does not speak the protocol leaves.
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(c.sock, f".s.PGSQL.{c.port}"))
    s.sendall(b"\x00\x00\x00\x02")
    s.close()
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(c.sock, f".s.PGSQL.{c.port}"))
    s.sendall(b"\x00\x00")
    s.close()
    # Checkpoints, and too many of them.
    q("checkpoint")
    for _ in range(3):
        q("insert into t select g, g from generate_series(1000, 400000) g; delete from t where id >= 1000")
    # The archive command fails.
    q("select pg_switch_wal()")
    # Autovacuum and autoanalyze.
    q("create table av (a int); insert into av select generate_series(1, 20000); delete from av where a % 2 = 0")
    time.sleep(4)
    # An autovacuum slowed down to a crawl, then a lock it has to give way to.
    q("create table big (a int) with (autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1);"
      "insert into big select generate_series(1, 100000)")
    q("delete from big")
    time.sleep(3)
    q("begin; lock table big; commit")
    time.sleep(0.5)
    # Slots: one reserving WAL it may not keep, a logical one.
    q("alter system set max_slot_wal_keep_size = '1MB'")
    q("select pg_reload_conf()")
    q("select pg_create_physical_replication_slot('lagging', true)")
    for _ in range(3):
        q("insert into t select g, g from generate_series(1000, 60000) g; delete from t where id >= 1000")
        q("select pg_switch_wal()")
    q("checkpoint")
    q("alter system reset max_slot_wal_keep_size")
    q("select pg_reload_conf()")
    q("select pg_create_logical_replication_slot('logical', 'test_decoding')")
    q("select pg_drop_replication_slot('logical')")
    # Settings changed by a reload, then a broken file.
    q("alter system set work_mem = '5MB'")
    q("select pg_reload_conf()")
    time.sleep(0.5)
    with open(os.path.join(c.data, "postgresql.conf"), "a") as f:
        f.write("this line = = is broken\n")
    q("select pg_reload_conf()")
    time.sleep(0.5)
    lines = open(os.path.join(c.data, "postgresql.conf")).read().splitlines()
    with open(os.path.join(c.data, "postgresql.conf"), "w") as f:
        f.write("\n".join(l for l in lines if "is broken" not in l) + "\n")
    q("alter system reset work_mem")
    q("select pg_reload_conf()")
    time.sleep(0.5)


def crash(c):
    idle = c.background("select pg_sleep(10)")
    victim = c.background("select pg_sleep(10) /* victim */")
    time.sleep(0.5)
    pid = c.val("select pid from pg_stat_activity where query like '%victim%' and pid <> pg_backend_pid()")
    os.kill(int(pid), 9)
    idle.wait()
    victim.wait()
    for _ in range(100):
        if c.psql("select 1").returncode == 0:
            break
        time.sleep(0.1)


def corrupt(c):
    c.psql("create table corrupt (a int); insert into corrupt select generate_series(1, 1000);"
           "create table short (a int); insert into short select generate_series(1, 10000); checkpoint")
    path = os.path.join(c.data, c.val("select pg_relation_filepath('corrupt')"))
    short = os.path.join(c.data, c.val("select pg_relation_filepath('short')"))
    c.stop()
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xde\xad\xbe\xef" * 64)
    with open(short, "r+b") as f:
        f.truncate(8192 * 2 + 100)
    # Connections while it starts up.
    subprocess.run(as_server([f"{c.bin}/pg_ctl", "-D", c.data, "-l", os.path.join(c.dir, "server.out"), "start"]),
                   capture_output=True)
    for _ in range(50):
        if c.psql("select 1").returncode == 0:
            break
        time.sleep(0.02)
    c.psql("select count(*) from corrupt")
    c.psql("select count(*) from short")


def standby(primary, work, major):
    s = Cluster(major, work, "standby", primary.port + 1)
    # Not waiting for the archive: its command fails on purpose.
    start, stop = (("select pg_backup_start('fixture', true)", "select labelfile from pg_backup_stop(false)")
                   if major >= 15 else
                   ("select pg_start_backup('fixture', true, false)", "select labelfile from pg_stop_backup(false, false)"))
    out = subprocess.run([PSQL, "-X", "-q", "-A", "-t", "-h", primary.sock, "-p", str(primary.port), "-U", "postgres",
                          "-c", start, "-c", f"\\! cp -a {primary.data} {s.data}", "-c", stop],
                         capture_output=True, text=True, check=True).stdout
    label = out[out.index("START WAL LOCATION"):]
    for gone in ["postmaster.pid", "postmaster.opts"]:
        try:
            os.remove(os.path.join(s.data, gone))
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.join(s.data, "log"), ignore_errors=True)
    open(os.path.join(s.data, "backup_label"), "w").write(label.rstrip() + "\n")
    open(os.path.join(s.data, "standby.signal"), "w").close()
    s.conf(f"port = {s.port}\nunix_socket_directories = '{s.sock}'\nhot_standby = on\narchive_mode = off\n"
           f"primary_conninfo = 'host={primary.sock} port={primary.port} user=postgres application_name=fixture'")
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "65534:65534", s.data], check=True)
    s.conf("primary_slot_name = 'standby_slot'\nmax_standby_streaming_delay = 0\nhot_standby_feedback = off")
    primary.psql("select pg_create_physical_replication_slot('standby_slot')")
    primary.psql("alter system set synchronous_standby_names = 'fixture'")
    primary.psql("alter system set wal_sender_timeout = '1s'")
    primary.psql("select pg_reload_conf()")
    s.start()
    time.sleep(1)
    primary.psql("create table from_primary (a int); insert into from_primary select generate_series(1, 1000); checkpoint")
    time.sleep(1)
    primary.psql("select pg_drop_replication_slot('standby_slot')")
    # A query on the standby that recovery must cancel.
    reader = s.background("begin isolation level repeatable read; select count(*) from from_primary; select pg_sleep(3); commit")
    time.sleep(0.5)
    primary.psql("delete from from_primary")
    primary.psql("vacuum from_primary")
    reader.wait()
    # The standby stops answering: the primary's walsender gives up on it.
    receiver = s.val("select pid from pg_stat_wal_receiver")
    os.kill(int(receiver), 19)
    time.sleep(3)
    os.kill(int(receiver), 18)
    primary.psql("alter system reset synchronous_standby_names")
    primary.psql("alter system reset wal_sender_timeout")
    primary.psql("select pg_reload_conf()")
    # The primary goes away and comes back.
    primary.stop()
    time.sleep(1)
    primary.start()
    time.sleep(6)
    s.psql("checkpoint")
    s.psql("select pg_promote()")
    time.sleep(1)
    s.stop()
    return s


def collect(c, name):
    log = os.path.join(c.data, "log")
    for ext, suffix in [("", "log"), (".csv", "csv"), (".json", "json")]:
        src = os.path.join(log, f"pg{ext}")
        if os.path.exists(src):
            dst = os.path.join(OUT, f"{name}.{suffix}")
            shutil.copy(src, dst)
            os.chmod(dst, 0o644)


def run(major, work):
    c = Cluster(major, work, "primary", 25432 + major * 10)
    c.initdb()
    dest = "stderr,csvlog" + (",jsonlog" if major >= 15 else "")
    c.conf(f"""port = {c.port}
listen_addresses = ''
unix_socket_directories = '{c.sock}'
fsync = off
logging_collector = on
log_destination = '{dest}'
log_directory = 'log'
log_filename = 'pg'
log_rotation_age = 0
log_rotation_size = 0
log_line_prefix = '{PREFIX}'
log_timezone = 'UTC'
lc_messages = 'C'
log_connections = on
log_disconnections = on
log_checkpoints = on
log_lock_waits = on
deadlock_timeout = '100ms'
log_temp_files = 0
log_autovacuum_min_duration = 0
autovacuum_naptime = 1
log_min_duration_statement = 200
log_statement = 'ddl'
max_connections = 10
superuser_reserved_connections = 3
max_wal_size = '32MB'
checkpoint_warning = '1h'
archive_mode = on
archive_command = 'false'
wal_level = logical
max_wal_senders = 3
password_encryption = 'scram-sha-256'""")
    with open(os.path.join(c.data, "pg_hba.conf"), "w") as f:
        f.write("local all rejectme reject\nlocal all pwuser scram-sha-256\nlocal all peeruser peer\n"
                "local all postgres,lowpriv,nologin_role,nosuchrole trust\nlocal replication all trust\n")
    c.start()
    step("provoke", lambda: provoke(c, major))
    step("crash", lambda: crash(c))
    step("corrupt", lambda: corrupt(c))
    s = None
    try:
        s = standby(c, work, major)
    except Exception as e:
        print(f"   step standby: {e}", file=sys.stderr)
    c.stop()
    collect(c, f"pg{major}")
    if s:
        collect(s, f"pg{major}-standby")


def main():
    global PSQL
    PSQL = sh(os.path.join(ROOT, "scripts", "pg-bin.sh"), "psql").stdout.strip()
    majors = [int(a) for a in sys.argv[1:]] or [12, 13, 14, 15, 16, 17, 18]
    os.makedirs(OUT, exist_ok=True)
    for major in majors:
        work = tempfile.mkdtemp(prefix=f"pgagent-fixtures{major}.")
        os.chmod(work, 0o777)
        print(f"== PostgreSQL {major}", file=sys.stderr)
        try:
            run(major, work)
        finally:
            for name in ["primary", "standby"]:
                d = os.path.join(work, name, "data")
                if os.path.exists(os.path.join(d, "postmaster.pid")):
                    subprocess.run(as_server([pg_bin(major) + "/pg_ctl", "-D", d, "-m", "immediate", "stop"]),
                                   capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
