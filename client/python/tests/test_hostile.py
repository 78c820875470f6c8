# test_hostile.py - the module attacked as a hostile user would: fork while threads wait, two
# threads closing one client while others wait and publish, Ctrl-C in a wait, more threads than
# reader slots, a session closed under its waiters, objects used after every kind of close.
import os
import shutil
import signal
import threading

import pytest

import shmb
from conftest import Broker, wait_for
from test_fork import run_in_child


def is_busy(cur):
    try:
        cur.position
        return False
    except RuntimeError:
        return True


def test_fork_while_a_thread_waits(broker, client):
    s = client.open(client.create("acme"), "acme")
    cur = s.cursor()
    out = []
    t = threading.Thread(target=lambda: out.append(cur.wait(30)))
    t.start()
    wait_for(lambda: is_busy(cur), 10, "the waiter asleep")

    def child():
        # The copied waiter does not exist here: ForkError, not "busy", and close() does not
        # wait for it.
        try:
            cur.wait(0)
            return "no error"
        except shmb.ForkError:
            pass
        try:
            client.wait(0)
            return "no error"
        except shmb.ForkError:
            pass
        client.close()
        return "ForkError"

    assert run_in_child(child) == ("ok", "ForkError")
    s.publish(b"wake")
    t.join(30)
    assert out == [True] and cur.next().data == b"wake"


def test_two_threads_close_while_others_wait_and_publish(broker):
    c = shmb.Client(broker.name)
    sid = c.create("acme")
    s = c.open(sid, "acme")
    waiters = [s.cursor() for _ in range(6)]
    results = []
    lock = threading.Lock()
    go = threading.Event()

    def waiter(cur):
        try:
            while True:
                cur.wait(None)
                try:
                    while cur.next() is not None:
                        pass
                except shmb.Overrun:  # the publishers outrun it: fine, read on
                    pass
        except shmb.Closed:
            with lock:
                results.append("Closed")

    def publisher():
        h = None
        try:
            h = c.open(sid, "acme")
            go.set()
            while True:
                h.publish(b"x")
        except shmb.Closed:
            with lock:
                results.append("Closed")
        except shmb.Overrun:  # a full ring is fine: what matters is the close
            with lock:
                results.append("Closed")

    threads = [threading.Thread(target=waiter, args=(w,)) for w in waiters]
    threads += [threading.Thread(target=publisher) for _ in range(2)]
    for t in threads:
        t.start()
    go.wait(10)
    closers = [threading.Thread(target=c.close) for _ in range(2)]
    for t in closers:
        t.start()
    for t in closers + threads:
        t.join(30)
        assert not t.is_alive()
    assert results == ["Closed"] * len(threads)
    assert c.closed


def test_ctrl_c_reaches_a_main_thread_waiting_forever(client):
    cur = client.open(client.create("acme"), "acme").cursor()
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        cur.wait(None)
    timer.join()
    assert cur.wait(0) is False  # the cursor is usable again (not left busy)


def test_more_threads_than_reader_slots(monkeypatch):
    b = Broker(["--readers-per-worker", "3"])
    try:
        monkeypatch.setenv("SHMB_RUNTIME_DIR", b.runtime_dir)
        with shmb.Client(b.name) as c:
            sid = c.create("acme")
            s = c.open(sid, "acme")  # the main thread holds a slot
            cursors = [s.cursor() for _ in range(8)]
            out = []
            lock = threading.Lock()
            barrier = threading.Barrier(8)

            def waiter(cur):
                barrier.wait()
                try:
                    r = cur.wait(2)
                except shmb.NoReaderSlot as e:
                    r = ("NoReaderSlot", isinstance(e, shmb.Full))
                with lock:
                    out.append(r)

            threads = [threading.Thread(target=waiter, args=(cur,)) for cur in cursors]
            for t in threads:
                t.start()
            wait_for(lambda: len(out) >= 6, 10, "threads beyond the slots to be refused")
            s.publish(b"go")
            for t in threads:
                t.join(10)
            assert out.count(("NoReaderSlot", True)) >= 6 and out.count(True) >= 1, out
    finally:
        assert b.stop() == 0
        shutil.rmtree(b.runtime_dir, ignore_errors=True)


def test_session_closed_under_its_waiters(client):
    s = client.open(client.create("acme"), "acme")
    cursors = [s.cursor() for _ in range(4)]
    out = []

    def waiter(cur):
        try:
            cur.wait(None)
            out.append("returned")
        except shmb.Closed:
            out.append("Closed")

    threads = [threading.Thread(target=waiter, args=(c,)) for c in cursors]
    for t in threads:
        t.start()
    wait_for(lambda: all(is_busy(c) for c in cursors), 10, "every waiter asleep")
    s.close()
    for t in threads:
        t.join(10)
    assert out == ["Closed"] * 4
    for cur in cursors:
        with pytest.raises(shmb.Closed):
            cur.next()


def test_gc_of_an_unclosed_client_with_a_follower(broker):
    import asyncio
    import gc

    async def main():
        c = shmb.Client(broker.name)
        cur = c.open(c.create("acme"), "acme").cursor()
        fol = cur.follow()
        t = asyncio.ensure_future(fol.__anext__())
        await asyncio.sleep(0)
        t.cancel()
        # client -> loop reader -> client, client -> followers -> cursor -> session -> client

    asyncio.run(main())
    assert os.getpid() in broker.attached_pids()
    gc.collect()  # the cycles are collected and the client detaches
    wait_for(lambda: os.getpid() not in broker.attached_pids(), 10, "the worker slot released")


SIGNAL_CLOSE = r"""
import os, signal, sys, threading
import shmb
c = shmb.Client(sys.argv[1])
s = c.open(c.create("acme"), "acme")
cur = s.cursor()
what = sys.argv[2]
target = {"client": c.close, "session": s.close, "cursor": cur.close}[what.split("-")[0]]
signal.signal(signal.SIGUSR1, lambda *a: target())
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
try:
    if what.endswith("-clientwait"):
        s.subscribe()
        c.wait(None)
    else:
        cur.wait(None)
    print("returned")
except shmb.Closed as e:
    print("Closed", e)
"""


@pytest.mark.parametrize("what", ["client", "session", "cursor", "client-clientwait"])
def test_signal_handler_closes_under_its_own_wait(broker, what):
    # A graceful-shutdown handler (SIGTERM -> client.close()) runs on the thread it interrupted,
    # between two slices of that thread's wait: close() must neither wait for that wait (it
    # would wait forever) nor free what the wait uses next.
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", SIGNAL_CLOSE, broker.name, what],
                       capture_output=True, text=True, timeout=20, env=broker.env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Closed"), (r.stdout, r.stderr)
