# test_threads.py - threads: many threads waiting on cursors at once (GIL released while they
# sleep), one thread per cursor enforced, and a Client closed while threads wait on it.
import threading
import time

import pytest

import shmb


def test_many_threads_wait_and_all_wake(client):
    sessions = [client.open(client.create("acme"), "acme") for _ in range(8)]
    n = 32
    got = [None] * n
    started = threading.Barrier(n + 1)

    def reader(i):
        cur = sessions[i % len(sessions)].cursor()
        started.wait()
        assert cur.wait(30)
        got[i] = cur.next().data

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    started.wait()
    # While every reader sleeps in shmb_cursor_wait, this thread runs Python: the GIL is free.
    spins = 0
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        spins += 1
    assert spins > 1000
    for k, s in enumerate(sessions):
        s.publish(b"news %d" % k)
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert got == [b"news %d" % (i % len(sessions)) for i in range(n)]


def test_wait_timeout_and_bad_timeouts(client):
    cur = client.open(client.create("acme"), "acme").cursor()
    t0 = time.monotonic()
    assert cur.wait(0.05) is False
    assert time.monotonic() - t0 >= 0.045
    assert cur.wait(0) is False
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError):
            cur.wait(bad)
    with pytest.raises(TypeError):
        cur.wait("1")
    assert client.wait(0) is False


def test_one_thread_per_cursor(client):
    s = client.open(client.create("acme"), "acme")
    cur = s.cursor()
    inside = threading.Event()
    result = []

    def waiter():
        inside.set()
        result.append(cur.wait(30))

    t = threading.Thread(target=waiter)
    t.start()
    inside.wait()
    # The waiter marks the cursor busy before it releases the GIL; poll until it sleeps.
    from conftest import wait_for

    def busy():
        try:
            cur.next()
            return False
        except RuntimeError:
            return True
    wait_for(busy, 10, "the cursor to be busy")
    with pytest.raises(RuntimeError):
        cur.wait(0)
    s.publish(b"go")
    t.join(30)
    assert result == [True] and cur.next().data == b"go"


def test_close_client_while_threads_wait(broker):
    c = shmb.Client(broker.name)
    s = c.open(c.create("acme"), "acme")
    cursors = [s.cursor() for _ in range(8)]
    errors = []
    ready = threading.Barrier(len(cursors) + 1)

    def waiter(cur):
        ready.wait()
        try:
            cur.wait(None)  # forever: only close() ends it
            errors.append("returned")
        except shmb.Closed as e:
            errors.append(type(e).__name__)

    threads = [threading.Thread(target=waiter, args=(cur,)) for cur in cursors]
    for t in threads:
        t.start()
    ready.wait()
    from conftest import wait_for
    wait_for(lambda: all(cur_busy(cur) for cur in cursors), 10, "every waiter asleep")
    t0 = time.monotonic()
    c.close()  # returns once no thread is inside libshmb with a handle it frees
    assert time.monotonic() - t0 < 2
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert errors == ["Closed"] * len(cursors)
    with pytest.raises(shmb.Closed):
        s.publish(b"x")


def cur_busy(cur):
    try:
        cur.position
        return False
    except RuntimeError:
        return True


def test_close_cursor_while_a_thread_waits(client):
    cur = client.open(client.create("acme"), "acme").cursor()
    out = []

    def waiter():
        try:
            cur.wait(None)
        except shmb.Closed:
            out.append("Closed")

    t = threading.Thread(target=waiter)
    t.start()
    from conftest import wait_for
    wait_for(lambda: cur_busy(cur), 10, "the waiter asleep")
    cur.close()
    t.join(10)
    assert out == ["Closed"] and cur.closed


def test_threads_publish_and_read_concurrently(client):
    sid = client.create("acme")
    n_threads, per = 8, 200
    done = []

    def worker(k):
        s = client.open(sid, "acme")  # a handle per thread (one thread at a time per handle)
        for i in range(per):
            s.publish(b"%d:%d" % (k, i))
        done.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(done) == list(range(n_threads))
    assert client.open(sid, "acme").stat().last_event_id == n_threads * per
