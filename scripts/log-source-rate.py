#!/usr/bin/env python3
"""The daemon's log source, timed: how long the agent takes from its start to the last
batch of a log it reads from the beginning. Used by bench-peers.sh.

    scripts/log-source-rate.py AGENT CONFIG STATE_DIR LOG AGENT_LOG

Prints "MB/s peak_rss_kB reader_cpu_ms spool_cpu_ms".

The end is found from the reader's own thread (`pg_log`): status shows the offset as of
the supervisor's last health check (about a second old), which on a 50 MB log that
takes two seconds was half the run. Once status shows the whole file read (all but a
partial last line), the end is the last moment the reader thread used CPU in earnest
(more than 1 ms in a 20 ms step). Its CPU and the spool thread's (`buffer`) are read from
/proc/<pid>/task/*/schedstat.
"""
import json
import os
import signal
import subprocess
import sys
import time

STEP = 0.02
BUSY_NS = 1_000_000


def threads(pid):
    out = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                run_ns = int(f.read().split()[0])
        except OSError:
            continue
        out[name] = out.get(name, 0) + run_ns
    return out


def offset(state_dir):
    try:
        with open(os.path.join(state_dir, "status.json")) as f:
            child = json.load(f)["children"].get("pg_log") or {}
        return (child.get("detail") or {}).get("offset", 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


def hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main():
    agent, config, state_dir, log, agent_log = sys.argv[1:6]
    size = os.path.getsize(log)
    # All but a last line the server may still be writing.
    with open(log, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    complete = size - (len(tail) - tail.rfind(b"\n") - 1) if b"\n" in tail else size
    start = time.monotonic()
    with open(agent_log, "w") as err:
        p = subprocess.Popen([agent, "run", "-c", config, "--log-format", "json"], stderr=err)
    last_busy, last_cpu, last_poll, signalled = start, 0, start, False
    try:
        while p.poll() is None:
            time.sleep(STEP)
            now = time.monotonic()
            cpu = threads(p.pid).get("pg_log", 0)
            if cpu - last_cpu > BUSY_NS:
                last_busy = now
            last_cpu = cpu
            if now - last_poll >= 0.2:
                last_poll = now
                # SIGUSR1 before the agent set up its handler would stop it.
                if os.path.exists(os.path.join(state_dir, "status.json")) or now - start > 2:
                    p.send_signal(signal.SIGUSR1)
                    signalled = True
                if signalled and offset(state_dir) >= complete and now - last_busy > 0.5:
                    break
            if now - start > 3600:
                sys.exit("log-source-rate: the log was not read within an hour")
        if p.poll() is not None:
            sys.exit(f"log-source-rate: the agent exited ({p.returncode}); see {agent_log}")
        th = threads(p.pid)
        peak = hwm_kb(p.pid)
    finally:
        if p.poll() is None:
            p.terminate()
            p.wait()
    wall = max(last_busy - start, 1e-3)
    print(f"{size / 1e6 / wall:.0f} {peak} {th.get('pg_log', 0) / 1e6:.0f} {th.get('buffer', 0) / 1e6:.0f}")


if __name__ == "__main__":
    main()
