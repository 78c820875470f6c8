# conftest.py - what the Python binding's tests share: a real shmbrokerd per test, started under
# a unique instance name with a private runtime directory (like tests/harness.c), awaited through
# its --ready-fd, and stopped at the end with the checks of a clean teardown: exit status 0 after
# SIGTERM, segment unlinked (--unlink-on-exit), runtime directory removed.
#
# ctest sets SHMB_BROKERD (the built shmbrokerd) and PYTHONPATH (the build tree's shmb package).
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

BROKERD = os.environ.get("SHMB_BROKERD")
_serial = 0

# Small segments, as tests/harness.h's H_DEFAULT_ARGS, but with room for many threads per process.
DEFAULT_ARGS = ["--max-sessions", "256", "--ring-events", "64", "--ring-bytes", "16384",
                "--max-event-bytes", "4096", "--max-workers", "16", "--readers-per-worker", "64"]


def wait_for(cond, timeout, what):
    """Polls cond() every 5 ms until truthy (where no event exists to wait on); fails after
    timeout seconds."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class Broker:
    def __init__(self, args=()):
        global _serial
        if not BROKERD:
            pytest.skip("SHMB_BROKERD is not set (run through ctest)")
        _serial += 1
        self.name = f"py{os.getpid()}_{_serial}"
        self.runtime_dir = tempfile.mkdtemp(prefix="shmb-pyt.")
        self.shm_path = f"/dev/shm/shmb.{self.name}"
        self.log_path = os.path.join(self.runtime_dir, "broker.log")
        self.args = list(args)
        self.proc = None
        self.start()

    def start(self):
        r, w = os.pipe()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [BROKERD, "--name", self.name, "--foreground", "--ready-fd", str(w),
                 "--unlink-on-exit", *DEFAULT_ARGS, *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(w,),
                env={**os.environ, "SHMB_RUNTIME_DIR": self.runtime_dir})
        os.close(w)
        got = b""
        end = time.monotonic() + 15
        while b"\n" not in got and time.monotonic() < end:
            ready, _, _ = select.select([r], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 64)
            if not chunk:
                break
            got += chunk
        os.close(r)
        assert got == b"ready\n", f"broker did not start: {got!r}\n{self.log()}"

    def env(self):
        """Environment for a process that attaches to this broker."""
        return {**os.environ, "SHMB_RUNTIME_DIR": self.runtime_dir, "SHMB_NAME": self.name}

    def log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def attached_pids(self):
        """The pids of the worker slots attached now (shmctl workers --json)."""
        import json
        out = subprocess.run([os.environ["SHMB_SHMCTL"], "--name", self.name, "workers",
                              "--json"], capture_output=True, check=True,
                             env={**os.environ, "SHMB_RUNTIME_DIR": self.runtime_dir}).stdout
        return {w["pid"] for w in json.loads(out) if w.get("state", "live") == "live"}

    def kill(self):
        self.proc.kill()
        self.proc.wait(15)

    def stop(self):
        """SIGTERM; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
                raise AssertionError(f"broker did not stop on SIGTERM\n{self.log()}")
        return self.proc.returncode


def serve(monkeypatch, args=()):
    """A broker fixture's body: Broker(args), this process's environment pointed at it, and the
    checks of a clean teardown. `yield from serve(monkeypatch, [...])` in a fixture."""
    b = Broker(args)
    monkeypatch.setenv("SHMB_RUNTIME_DIR", b.runtime_dir)
    monkeypatch.setenv("SHMB_NAME", b.name)
    yield b
    rc = b.stop()
    log = b.log()
    shutil.rmtree(b.runtime_dir, ignore_errors=True)
    assert rc == 0, f"broker exit status {rc}\n{log}"
    assert not os.path.exists(b.shm_path), "segment left behind"


@pytest.fixture
def broker(monkeypatch):
    yield from serve(monkeypatch)


@pytest.fixture
def client(broker):
    import shmb
    with shmb.Client(broker.name) as c:
        yield c
