#!/usr/bin/python3
"""bench_python.py - what the Python binding costs (issue 12, item 5), in one run:

  1. session.publish(256 B) per call, against the same loop calling shmb._noop(data), a C function
     of the same extension that does nothing (CPython's call cost): the binding's ratio;
  2. cursor.next() per event, against the same loop calling shmb._noop();
  3. events/s through the gunicorn SSE path (client/python/examples/wsgi_app.py, --workers 4,
     gthread): one stream on a Unix socket, events published from this process, counted as the
     stream's client parses them.

    /usr/bin/python3 tools/bench_python.py [--build BUILD] [--runs 7] [--n 200000] [--sse 20000]

It starts its own shmbrokerd (BUILD/broker/shmbrokerd) under a private name and runtime dir and
prints medians of --runs runs (each loop timed with perf_counter_ns). Needs Debian's gunicorn.
"""
import argparse
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BATCH = 128
WINDOW = 128
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_broker(brokerd, name, runtime_dir, extra):
    r, w = os.pipe()
    proc = subprocess.Popen([brokerd, "--name", name, "--foreground", "--ready-fd", str(w),
                             "--unlink-on-exit", *extra], pass_fds=(w,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "SHMB_RUNTIME_DIR": runtime_dir})
    os.close(w)
    ready, _, _ = select.select([r], [], [], 15)
    got = os.read(r, 16) if ready else b""
    os.close(r)
    if got != b"ready\n":
        proc.kill()
        sys.exit(f"bench_python: shmbrokerd did not start ({got!r})")
    return proc


def per_op_ns(loop, n, runs):
    """Median over runs of loop(n)'s time per iteration, in ns."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        loop(n)
        samples.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(samples)


def bench_calls(shmb, client, n, runs):
    s = client.open(client.create("bench"), "bench")
    data = b"x" * 256
    publish, noop = s.publish, shmb._noop

    def loop_publish(k):
        for _ in range(k):
            publish(data)

    def loop_noop_data(k):
        for _ in range(k):
            noop(data)

    out = {}
    loop_publish(1000)  # warm up
    out["publish_256"] = per_op_ns(loop_publish, n, runs)
    out["noop_data"] = per_op_ns(loop_noop_data, n, runs)
    out["publish_c"] = statistics.median(shmb._bench_c(s, data, n) for _ in range(runs))
    # cursor.next: each run reads n events published beforehand (the ring holds them all).
    # cursor.next: batches of BATCH events published (untimed), then read (timed), so the ring
    # (the broker's default 256 events) always holds them, hot in cache as in a live stream. The
    # baseline runs the same batched loop calling shmb._noop().
    nxt = s.cursor(after=s.stat().last_event_id).next

    def batched(call, k):
        total = 0
        for _ in range(k // BATCH):
            for _ in range(BATCH):
                publish(data)
            t0 = time.perf_counter_ns()
            for _ in range(BATCH):
                call()
            total += time.perf_counter_ns() - t0
        return total / (k // BATCH * BATCH)

    out["cursor_next"] = statistics.median(batched(nxt, n) for _ in range(runs))
    if nxt() is not None:
        raise SystemExit("bench_python: the cursor did not read every event")
    out["noop"] = statistics.median(batched(noop, n) for _ in range(runs))
    cur = s.cursor(after=s.stat().last_event_id)

    def next_c():
        for _ in range(BATCH):
            publish(data)
        return shmb._bench_c(cur, b"", BATCH)

    out["next_c"] = statistics.median(
        statistics.mean(next_c() for _ in range(n // BATCH)) for _ in range(runs))
    cur.close()
    s.close()
    return out


def unix_get(path, url, tenant):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nX-Tenant: %s\r\n\r\n" % (url.encode(),
                                                                       tenant.encode()))
    return s


def bench_sse(client, build, env, runtime_dir, m, runs):
    sock = os.path.join(runtime_dir, "gunicorn.sock")
    examples = os.path.join(ROOT, "client", "python", "examples")
    genv = {**env, "PYTHONPATH": os.pathsep.join([os.path.join(build, "client", "python"),
                                                  examples])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", os.path.join(examples, "gunicorn_conf.py"),
         "--bind", f"unix:{sock}", "--workers", "4", "--worker-class", "gthread", "--threads",
         "4", "wsgi_app:app"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=genv,
        start_new_session=True)
    try:
        end = time.monotonic() + 30
        while not os.path.exists(sock):  # no event says "listening": poll with a deadline
            if time.monotonic() > end or proc.poll() is not None:
                sys.exit("bench_python: gunicorn did not start")
            time.sleep(0.01)
        rates = []
        payload = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"n":1}}'
        for _ in range(runs):
            sid = client.create("bench")
            s = client.open(sid, "bench")
            conn = unix_get(sock, f"/sessions/{sid}/events", "bench")
            buf = b""
            while b": stream\n\n" not in buf:  # headers and the stream's opening comment
                buf += conn.recv(65536)
            # Publish at most WINDOW events ahead of what the stream's client has parsed, so
            # the ring (256) never overruns: the pipelined rate of the whole path.
            published = seen = 0
            tail = b""
            t0 = time.perf_counter_ns()
            while seen < m:
                while published < m and published - seen < WINDOW:
                    s.publish(payload)
                    published += 1
                chunk = conn.recv(1 << 20)
                if not chunk:
                    sys.exit("bench_python: the SSE stream ended early")
                if b"event: lagged" in chunk:
                    sys.exit("bench_python: the stream overran (lagged)")
                tail = tail[-32:] + chunk
                at = tail.rfind(b"id: ")
                nl = tail.find(b"\n", at)
                if at >= 0 and nl > at:
                    seen = int(tail[at + 4:nl])
            dt = time.perf_counter_ns() - t0
            conn.close()
            s.close()
            client.delete(sid, "bench")
            rates.append(m / (dt / 1e9))
        return statistics.median(rates)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--n", type=int, default=200_000, help="calls per timed loop")
    ap.add_argument("--sse", type=int, default=20_000, help="events per SSE run (0: skip)")
    ap.add_argument("--json", help="write the results to this file")
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(a.build, "client", "python"))
    import shmb

    runtime_dir = tempfile.mkdtemp(prefix="shmb-benchpy.")
    name = f"benchpy{os.getpid()}"
    # The broker's default ring (256 events of up to 512 B); each run deletes its sessions.
    broker = start_broker(os.path.join(a.build, "broker", "shmbrokerd"), name, runtime_dir,
                          ["--max-sessions", "16"])
    os.environ["SHMB_RUNTIME_DIR"] = runtime_dir
    try:
        with shmb.Client(name) as client:
            r = bench_calls(shmb, client, a.n, a.runs)
            if a.sse:
                r["sse_events_per_s"] = bench_sse(client, a.build,
                                                  {**os.environ, "SHMB_NAME": name},
                                                  runtime_dir, a.sse, max(3, a.runs // 2))
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(20)
        shutil.rmtree(runtime_dir, ignore_errors=True)
    r["publish_ratio"] = r["publish_256"] / r["noop_data"]
    r["next_ratio"] = r["cursor_next"] / r["noop"]
    print(f"Python binding (shmb {shmb.__version__}, CPython {sys.version.split()[0]}), "
          f"medians of {a.runs} runs of {a.n:,} calls (Release build: --build build-bench):")
    r["publish_binding"] = r["publish_256"] - r["publish_c"] - r["noop_data"]
    r["next_binding"] = r["cursor_next"] - r["next_c"] - r["noop"]
    print(f"  session.publish(256 B)  {r['publish_256']:7.1f} ns   shmb._noop(data) "
          f"{r['noop_data']:6.1f} ns   ratio {r['publish_ratio']:.2f}x  (target <= 3x)")
    print(f"      = call {r['noop_data']:.1f} + shmb_publish in C {r['publish_c']:.1f} "
          f"+ the binding {r['publish_binding']:.1f} ns")
    print(f"  cursor.next() per event {r['cursor_next']:7.1f} ns   shmb._noop()     "
          f"{r['noop']:6.1f} ns   ratio {r['next_ratio']:.2f}x  (target <= 3x)")
    print(f"      = call {r['noop']:.1f} + shmb_cursor_next in C {r['next_c']:.1f} "
          f"+ the binding (Event, bytes) {r['next_binding']:.1f} ns")
    if a.sse:
        print(f"  gunicorn SSE (4 gthread workers, one stream, {a.sse:,} events): "
              f"{r['sse_events_per_s']:,.0f} events/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    ok = r["publish_ratio"] <= 3 and r["next_ratio"] <= 3
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
