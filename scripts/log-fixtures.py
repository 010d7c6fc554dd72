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
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "src", "logs", "subclass", "fixtures")
PREFIX = "%m [%p] %q%u@%d "


def sh(*args, **kw):
    check = kw.pop("check", True)
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


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


def startup_packet(user, db="postgres", **params):
    fields = [b"user", user.encode(), b"database", db.encode()]
    for k, v in params.items():
        fields += [k.encode(), v.encode()]
    body = struct.pack("!i", 196608) + b"".join(f + b"\0" for f in fields) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("server closed the connection")
        out += chunk
    return out


def message(s):
    head = recv_exact(s, 5)
    return head[:1], recv_exact(s, struct.unpack("!i", head[1:])[0] - 4)


def send(s, kind, body=b""):
    s.sendall(kind + struct.pack("!i", len(body) + 4) + body)


class Raw:
    """A connection spoken by hand: what psql never sends."""

    def __init__(self, c, user="postgres", **params):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(os.path.join(c.sock, f".s.PGSQL.{c.port}"))
        self.s.sendall(startup_packet(user, **params))

    def until(self, kind):
        while True:
            k, body = message(self.s)
            if k == kind or k == b"E":
                return k, body

    def close(self):
        try:
            while self.s.recv(65536):
                pass
        except OSError:
            pass
        self.s.close()


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
    # A deadlock the checker avoids by letting a waiter jump the queue: the first session
    # holds dl_t and will wait for dl_u; the third holds dl_u and queues for dl_t behind
    # the second, which waits for the first.
    q("create table dl_t (a int); create table dl_u (a int)")
    s1 = c.background("begin; select count(*) from dl_t; select pg_sleep(0.5); lock table dl_u; commit")
    time.sleep(0.1)
    s3 = c.background("begin; lock table dl_u; select pg_sleep(0.2); select count(*) from dl_t; commit")
    time.sleep(0.05)
    s2 = c.background("begin; lock table dl_t; commit")
    for a in [s1, s2, s3]:
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
    # A client that breaks the protocol after its login; one that answers the password
    # request with a query; one that gives up in the middle of a TLS handshake, one that
    # speaks HTTP to it.
    r = Raw(c)
    r.until(b"Z")
    send(r.s, b"z")
    r.close()
    r = Raw(c, user="pwuser")
    r.until(b"R")
    send(r.s, b"Q", b"select 1\0")
    r.close()
    for then in [b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]:
        s = socket.create_connection(("127.0.0.1", c.port), timeout=10)
        s.sendall(struct.pack("!ii", 8, 80877103))
        if s.recv(1) == b"S" and then:
            s.sendall(then)
            try:
                s.recv(1024)
            except OSError:
                pass
        s.close()
    time.sleep(0.2)
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
    q("set log_min_messages = debug1; begin; lock table big; commit")
    time.sleep(0.5)
    # Slots: one reserving WAL it may not keep, a logical one.
    q("alter system set max_slot_wal_keep_size = '1MB'")
    q("select pg_reload_conf()")
    q("select pg_create_physical_replication_slot('lagging', true)")
    streaming = None
    if major >= 13:
        lsn = c.val("select lsn from pg_create_physical_replication_slot('lagging_active', true)")
        streaming = Raw(c, replication="true")
        streaming.until(b"Z")
        send(streaming.s, b"Q", f"START_REPLICATION SLOT lagging_active PHYSICAL {lsn}\0".encode())
        # Read and thrown away, never acknowledged: the slot stays where it was.
        threading.Thread(target=streaming.close, daemon=True).start()
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
    disk_full(c)


def disk_full(c):
    """A tablespace on a tiny file system (root only: it mounts one) filled by a table,
    then by a sort's temporary files."""
    if os.geteuid() != 0:
        return
    tiny = os.path.join(c.dir, "tiny")
    os.makedirs(tiny)
    sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", tiny)
    try:
        os.makedirs(os.path.join(tiny, "ts"))
        os.chown(os.path.join(tiny, "ts"), 65534, 65534)
        c.psql(f"create tablespace tiny location '{tiny}/ts'")
        c.psql("create table filler (a text) tablespace tiny")
        c.psql("insert into filler select repeat('x', 500) from generate_series(1, 10000)")
        c.psql("insert into filler select repeat('x', 500) from generate_series(1, 1000)")
        c.psql("set temp_tablespaces = tiny; set work_mem = '64kB';"
               "select * from generate_series(1, 200000) g order by g desc limit 1")
        c.psql("drop table filler")
        c.psql("drop tablespace tiny")
    finally:
        sh("umount", "-l", tiny, check=False)


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
           "create table short (a int); insert into short select generate_series(1, 10000);"
           "create index short_a on short (a); checkpoint")
    path = os.path.join(c.data, c.val("select pg_relation_filepath('corrupt')"))
    short = os.path.join(c.data, c.val("select pg_relation_filepath('short')"))
    c.stop()
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xde\xad\xbe\xef" * 64)
    with open(short, "r+b") as f:
        f.truncate(8192 * 2 + 100)
    # Connections while it starts up.
    subprocess.run(as_server([f"{c.bin}/pg_ctl", "-D", c.data, "-l", os.path.join(c.dir, "server.out"), "-W", "start"]),
                   capture_output=True)
    for _ in range(5000):
        try:
            if Raw(c).until(b"Z")[0] == b"Z":
                break
        except (OSError, EOFError):
            pass
        time.sleep(0.002)
    c.psql("select count(*) from corrupt")
    c.psql("select count(*) from short")
    c.psql("set enable_seqscan = off; set enable_bitmapscan = off; select * from short where a = 500")


def limits(c):
    """Limits put on the running postmaster (root only: prlimit): the memory a new session
    may map, then the number of processes its user may have."""
    if os.geteuid() != 0:
        return
    pid = open(os.path.join(c.data, "postmaster.pid")).readline().strip()

    def soft(limit):
        # As the server's user, and only the soft limit: root here may lack the
        # capability to change another user's limits.
        sh("su", "nobody", "-s", "/bin/sh", "-c", f"prlimit --pid {pid} {limit}")
    soft("--as=1000000000:unlimited")
    c.psql("select length(repeat('x', 900000000))")
    soft("--as=unlimited:unlimited")
    procs = len(sh("ps", "-u", "nobody", "-o", "pid=").stdout.split())
    hard = next(line.split()[3] for line in open(f"/proc/{pid}/limits") if line.startswith("Max processes"))
    soft(f"--nproc={procs}:")
    c.psql("select 1")
    soft(f"--nproc={hard}:")


def base_backup_of_corrupt(c):
    """A base backup that verifies checksums over the corrupted table (Debian's
    pg_basebackup 15 speaks to servers up to 15)."""
    tool = "/usr/lib/postgresql/15/bin/pg_basebackup"
    if c.major > 15 or not os.path.exists(tool):
        return
    target = os.path.join(c.dir, "basebackup")
    subprocess.run([tool, "-h", c.sock, "-p", str(c.port), "-U", "postgres", "-D", target, "-X", "fetch",
                    "--no-sync"], capture_output=True, timeout=120)
    shutil.rmtree(target, ignore_errors=True)


def archived(c, work, major):
    """The archive command fixed: a backup that waits for its WAL to be archived, WAL a
    replication client asks for after it was removed, and a server restored from the
    backup and the archive (connections tried while it starts)."""
    arch = os.path.join(c.dir, "archive")
    os.makedirs(arch)
    os.chmod(arch, 0o777)
    c.psql(f"alter system set archive_command = 'cp %p {arch}/%f'")
    c.psql("select pg_reload_conf()")
    ready = os.path.join(c.data, "pg_wal", "archive_status")
    for _ in range(300):
        if not any(f.endswith(".ready") for f in os.listdir(ready)):
            break
        time.sleep(0.1)
    r = Cluster(major, work, "restored", c.port + 2)
    start, stop = (("select pg_backup_start('fixture', true)", "select labelfile from pg_backup_stop(true)")
                   if major >= 15 else
                   ("select pg_start_backup('fixture', true, false)",
                    "select labelfile from pg_stop_backup(false, true)"))
    out = subprocess.run([PSQL, "-X", "-q", "-A", "-t", "-h", c.sock, "-p", str(c.port), "-U", "postgres",
                          "-c", "set log_min_messages = notice", "-c", start,
                          "-c", f"\\! cp -a {c.data} {r.data}",
                          # WAL the restored server replays before it is consistent.
                          "-c", "insert into t select g, g from generate_series(1000, 300000) g",
                          "-c", "delete from t where id >= 1000",
                          # The archive caught up, then made slow enough for the end of
                          # the backup to wait for it.
                          "-c", "select pg_switch_wal()",
                          "-c", f"\\! while ls {ready}/*.ready >/dev/null 2>&1; do sleep 0.1; done",
                          "-c", f"alter system set archive_command = 'sleep 4; cp %p {arch}/%f'",
                          "-c", "select pg_reload_conf()", "-c", stop],
                         capture_output=True, text=True, check=True).stdout
    label = out[out.index("START WAL LOCATION"):]
    c.psql(f"alter system set archive_command = 'cp %p {arch}/%f'")
    c.psql("select pg_reload_conf()")
    for _ in range(3):
        c.psql("insert into t select g, g from generate_series(1000, 60000) g; delete from t where id >= 1000")
        c.psql("select pg_switch_wal()")
    c.psql("checkpoint")
    c.psql("select pg_switch_wal()")
    c.psql("checkpoint")
    gone = Raw(c, replication="true")
    gone.until(b"Z")
    send(gone.s, b"Q", b"START_REPLICATION 0/1000000\0")
    gone.close()
    for name in ["postmaster.pid", "postmaster.opts"]:
        try:
            os.remove(os.path.join(r.data, name))
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.join(r.data, "log"), ignore_errors=True)
    shutil.rmtree(os.path.join(r.data, "pg_wal"))
    os.makedirs(os.path.join(r.data, "pg_wal", "archive_status"))
    open(os.path.join(r.data, "backup_label"), "w").write(label.rstrip() + "\n")
    open(os.path.join(r.data, "recovery.signal"), "w").close()
    for gone_file in ["postgresql.auto.conf"]:
        open(os.path.join(r.data, gone_file), "w").close()
    r.conf(f"port = {r.port}\nunix_socket_directories = '{r.sock}'\nlisten_addresses = ''\n"
           f"archive_mode = off\nhot_standby = on\nrestore_command = 'cp {arch}/%f %p'")
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "65534:65534", r.data], check=True)
    subprocess.run(as_server([f"{r.bin}/pg_ctl", "-D", r.data, "-l", os.path.join(r.dir, "server.out"), "-W", "start"]),
                   capture_output=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            k, _ = Raw(r).until(b"Z")
            if k == b"Z" and r.psql("select pg_is_in_recovery()").stdout.strip() == "f":
                break
        except (OSError, EOFError):
            pass
        time.sleep(0.05)
    r.psql("checkpoint")
    r.stop()
    return r


def wraparound(c):
    """Transaction and multixact IDs moved next to the wraparound limits with pg_resetwal
    (where the version has one here): warnings, then commands refused."""
    tool = os.path.join(c.bin, "pg_resetwal")
    if not os.path.exists(tool):
        return

    def reset(xids_left, mxids_left):
        """Moves the next ID to `left` before the wraparound limit (None: untouched)."""
        oldest = int(c.val("select min(datfrozenxid::text::bigint) from pg_database"))
        oldest_m = int(c.val("select min(datminmxid::text::bigint) from pg_database"))
        full = int(c.val("select txid_snapshot_xmax(txid_current_snapshot())"))
        c.stop()
        args, pages = [], []
        if xids_left is not None:
            xid = (oldest + 2**31 - 1 - xids_left) % 2**32
            epoch = (full >> 32) + (1 if xid < (full & 0xFFFFFFFF) else 0)
            args += ["-u", str(oldest), "-x", str(xid), "-e", str(epoch)]
            pages.append(os.path.join(c.data, "pg_xact", "%04X" % (xid // 1048576)))
        if mxids_left is not None:
            mxid = (oldest_m + 2**31 - 1 - mxids_left) % 2**32
            args += ["-m", f"{mxid},{oldest_m}"]
            pages.append(os.path.join(c.data, "pg_multixact", "offsets", "%04X" % (mxid // 65536)))
        # The status pages the new IDs fall on must exist: zeroed, as the server would
        # have made them.
        for path in pages:
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(b"\0" * 262144)
                if os.geteuid() == 0:
                    os.chown(path, 65534, 65534)
        subprocess.run(as_server([tool] + args + [c.data]), check=True, capture_output=True)
        c.start()

    def provoke_ids(seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            c.psql("select txid_current()")
            holder = c.background("begin; select * from t where id = 3 for share; select pg_sleep(0.3); commit")
            time.sleep(0.1)
            c.psql("begin; select * from t where id = 3 for share; commit")
            holder.wait()

    def settled():
        # Autovacuum freezes every database; until then the limits stay near.
        for _ in range(300):
            if int(c.val("select max(age(datfrozenxid)) from pg_database")) < 100000000 and int(c.val(
                    "select max(mxid_age(datminmxid)) from pg_database")) < 100000000:
                return
            time.sleep(0.2)

    # Autovacuum must be able to freeze everything: not the corrupted tables. Its reports
    # of every catalogue table in every database are not wanted here.
    c.psql("drop table if exists corrupt, short")
    c.psql("alter system set log_autovacuum_min_duration = -1")
    c.psql("select pg_reload_conf()")

    reset(5000000, 5000000)
    provoke_ids(3)
    settled()
    reset(500000, None)
    provoke_ids(2)
    settled()
    reset(None, 50)
    provoke_ids(2)


def standby(primary, work, major):
    s = Cluster(major, work, "standby", primary.port + 1)
    # Not waiting for the archive: its command fails on purpose.
    start, stop = (("select pg_backup_start('fixture', true)", "select labelfile from pg_backup_stop(false)")
                   if major >= 15 else
                   ("select pg_start_backup('fixture', true, false)", "select labelfile from pg_stop_backup(false, false)"))
    run = subprocess.run([PSQL, "-X", "-q", "-A", "-t", "-h", primary.sock, "-p", str(primary.port), "-U", "postgres",
                          "-c", start, "-c", f"\\! cp -a {primary.data} {s.data}", "-c", stop],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"backup for the standby: {run.stderr.strip()}")
    out = run.stdout
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
listen_addresses = '127.0.0.1'
ssl = on
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
    sh("openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=fixture",
       "-keyout", os.path.join(c.data, "server.key"), "-out", os.path.join(c.data, "server.crt"))
    os.chmod(os.path.join(c.data, "server.key"), 0o600)
    if os.geteuid() == 0:
        for f in ["server.key", "server.crt"]:
            os.chown(os.path.join(c.data, f), 65534, 65534)
    with open(os.path.join(c.data, "pg_hba.conf"), "w") as f:
        f.write("local all rejectme reject\nlocal all pwuser scram-sha-256\nlocal all peeruser peer\n"
                "local all postgres,lowpriv,nologin_role,nosuchrole trust\nlocal replication all trust\n")
    c.start()
    step("provoke", lambda: provoke(c, major))
    step("crash", lambda: crash(c))
    step("corrupt", lambda: corrupt(c))
    step("limits", lambda: limits(c))
    step("base backup", lambda: base_backup_of_corrupt(c))
    s = r = None
    try:
        s = standby(c, work, major)
    except Exception as e:
        print(f"   step standby: {e}", file=sys.stderr)
    try:
        r = archived(c, work, major)
    except Exception as e:
        print(f"   step archived: {e}", file=sys.stderr)
    step("wraparound", lambda: wraparound(c))
    c.stop()
    collect(c, f"pg{major}")
    if s:
        collect(s, f"pg{major}-standby")
    if r:
        collect(r, f"pg{major}-restore")


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
            for name in ["primary", "standby", "restored"]:
                d = os.path.join(work, name, "data")
                if os.path.exists(os.path.join(d, "postmaster.pid")):
                    subprocess.run(as_server([pg_bin(major) + "/pg_ctl", "-D", d, "-m", "immediate", "stop"]),
                                   capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
