# servers.py - starting the example apps under Debian's gunicorn and uvicorn for the end-to-end
# tests, and a small HTTP/SSE client over their Unix sockets (a socket path is race-free where a
# TCP port picked in advance is not).
import http.client
import os
import signal
import socket
import subprocess
import sys
import time

from conftest import wait_for

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def request(path, method, url, tenant, body=None, headers=None):
    """One request on a new connection: (status, worker pid, body bytes)."""
    c = UnixHTTPConnection(path)
    try:
        c.request(method, url, body=body, headers={"X-Tenant": tenant, **(headers or {})})
        r = c.getresponse()
        return r.status, int(r.getheader("X-Worker-Pid") or 0), r.read()
    finally:
        c.close()


class SSE:
    """A GET of an event stream: .status, .pid, and next() -> (id, data) of each event."""

    def __init__(self, path, url, tenant, last_event_id=None, timeout=30):
        self.conn = UnixHTTPConnection(path, timeout)
        h = {"X-Tenant": tenant, "Accept": "text/event-stream"}
        if last_event_id is not None:
            h["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", url, headers=h)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.pid = int(self.resp.getheader("X-Worker-Pid") or 0)

    def next(self):
        """The next event as (id, data); None at the end of the stream."""
        ev_id, data = None, []
        while True:
            line = self.resp.readline()
            if not line:
                return None
            line = line.rstrip(b"\n")
            if line == b"":
                if ev_id is not None:
                    return ev_id, b"\n".join(data)
                continue
            if line.startswith(b"id: "):
                ev_id = int(line[4:])
            elif line.startswith(b"data: "):
                data.append(line[6:])

    def close(self):
        self.conn.close()


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def threads_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


class Server:
    """gunicorn or uvicorn serving an example app on a Unix socket, attached to `broker`."""

    def __init__(self, broker, kind, workers, extra=()):
        self.sock = os.path.join(broker.runtime_dir, f"{kind}.sock")
        self.log_path = os.path.join(broker.runtime_dir, f"{kind}.log")
        env = {**broker.env(), "PYTHONPATH": os.pathsep.join(
            [os.environ.get("PYTHONPATH", ""), EXAMPLES])}
        if kind == "gunicorn":
            argv = [sys.executable, "-m", "gunicorn", "-c",
                    os.path.join(EXAMPLES, "gunicorn_conf.py"), "--bind", f"unix:{self.sock}",
                    "--workers", str(workers), *extra, "wsgi_app:app"]
        else:
            argv = [sys.executable, "-m", "uvicorn", "--uds", self.sock, "--workers",
                    str(workers), "--lifespan", "on", "--no-access-log", "--app-dir", EXAMPLES,
                    *extra, "asgi_app:app"]
        self.workers = workers
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        # No event says "every worker is up": poll with a deadline.
        wait_for(lambda: self.proc.poll() is not None or self._up(), 30, f"{kind} to serve")
        assert self.proc.poll() is None, f"{kind} exited:\n{self.log()}"

    def _up(self):
        if not os.path.exists(self.sock) or len(self.worker_pids()) < self.workers:
            return False
        try:
            return request(self.sock, "GET", "/", "t")[0] == 404
        except OSError:
            return False

    def worker_pids(self):
        if self.workers == 1 and "uvicorn" in self.proc.args:
            return [self.proc.pid]  # uvicorn serves in its own process with one worker
        # uvicorn's spawned workers are children of the supervisor (plus the resource tracker
        # of multiprocessing, which serves nothing); gunicorn's are the arbiter's children.
        return [p for p in children(self.proc.pid) if "resource_tracker" not in cmdline(p)]

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # Nothing of the server may outlive it (its workers are in its session).
        try:
            os.killpg(self.proc.pid, 0)
            time.sleep(0)
            wait_for(lambda: not pg_alive(self.proc.pid), 10, "the server's workers to exit")
        except ProcessLookupError:
            pass
        log = self.log()
        for bad in ("Traceback", "Segmentation", "core dumped"):
            assert bad not in log, f"server log has {bad}:\n{log}"


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def pg_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
