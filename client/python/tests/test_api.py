# test_api.py - the contract API of `import shmb` against a real broker: sessions, publish,
# cursors, attributes, stat, and every exception the library's codes map to.
import os
import shutil

import pytest

import shmb
from conftest import Broker, wait_for


def test_version_and_module():
    assert shmb.__version__.count(".") == 2
    assert shmb.Client.__doc__ and shmb.Session.publish.__doc__ and shmb.Cursor.follow.__doc__
    here = os.path.dirname(shmb.__file__)
    assert os.path.exists(os.path.join(here, "__init__.pyi"))
    assert os.path.exists(os.path.join(here, "py.typed"))
    assert issubclass(shmb.NotFound, KeyError) and issubclass(shmb.NotFound, shmb.Error)
    for name in ("PermissionDenied", "Overrun", "TooBig", "Conflict", "BrokerUnavailable",
                 "Full", "ForkError", "Closed", "InvalidArgument", "NoReaderSlot"):
        assert issubclass(getattr(shmb, name), shmb.Error)


def test_create_open_publish_read(client):
    sid = client.create("acme", "alice")
    assert len(sid) == shmb.SID_LEN and int(sid, 16) >= 0
    with client.open(sid, "acme", "alice") as s:
        assert (s.sid, s.tenant, s.principal) == (sid, "acme", "alice")
        assert s.publish(b"a" * 256) == 1
        assert s.publish("é", stream=3, kind=9) == 2
        assert s.publish(bytearray(b"ba"), kind=2) == 3
        assert s.publish(memoryview(b"xyz")[1:]) == 4
        cur = s.cursor()
        first = cur.next()
        assert (first.id, first.stream, first.kind, first.gap, first.data) == (1, 0, 1, False,
                                                                                b"a" * 256)
        assert first.ts_ms > 1_700_000_000_000
        rest = list(cur)  # what is there now
        assert [(e.id, e.data) for e in rest] == [(2, "é".encode()), (3, b"ba"), (4, b"yz")]
        assert rest[0].stream == 3 and rest[0].kind == 9
        assert cur.next() is None and list(cur) == [] and cur.position == 4
        assert [e.id for e in s.cursor(after=2)] == [3, 4]
        assert [e.id for e in s.cursor(stream=3)] == [2]
        info = s.stat()
        assert (info.sid, info.tenant, info.principal, info.last_event_id,
                info.oldest_event_id) == (sid, "acme", "alice", 4, 1)
    assert s.closed
    with pytest.raises(shmb.Closed):
        s.publish(b"x")


def test_ttl_options(client):
    sid = client.create("acme", inactivity_ttl_ms=60_000, absolute_ttl_ms=120_000)
    info = client.open(sid, "acme").stat()
    assert (info.inactivity_ttl_ms, info.absolute_ttl_ms, info.principal) == (60_000, 120_000, None)
    with pytest.raises(ValueError):
        client.create("acme", inactivity_ttl_ms=-5)
    with pytest.raises(TypeError):
        client.create("acme", absolute_ttl_ms="10")


def test_attrs_mapping(client):
    s = client.open(client.create("acme"), "acme")
    a = s.attrs
    a["proto"] = b"2025-06-18"
    a["cart"] = "[42]"
    assert a["cart"] == b"[42]" and dict(a) == {"proto": b"2025-06-18", "cart": b"[42]"}
    assert len(a) == 2 and "cart" in a and "nope" not in a and a.get("nope") is None
    with pytest.raises(KeyError):
        a["nope"]
    with pytest.raises(shmb.NotFound) as ei:
        del a["nope"]
    assert ei.value.code == -2 and ei.value.name == "SHMB_ENOENT" and "no such" in str(ei.value)
    val, ver = a.get_with_version("cart")
    a.set_if("cart", b"[43]", ver)
    with pytest.raises(shmb.Conflict) as ei:
        a.set_if("cart", b"[44]", ver)
    assert ei.value.code == -15 and a["cart"] == b"[43]"
    a.set_if("fresh", b"1", 0)
    with pytest.raises(shmb.Conflict):
        a.set_if("fresh", b"2", 0)
    assert a.pop("fresh") == b"1" and "fresh" not in a
    a.update(x=b"1", y=b"2")
    assert sorted(a.keys()) == ["cart", "proto", "x", "y"]
    with pytest.raises(shmb.TooBig):
        a["big"] = b"x" * (shmb.ATTR_MAX + 1)
    with pytest.raises(shmb.InvalidArgument):
        a["bad key"] = b"v"  # keys are printable ASCII without spaces
    with pytest.raises(TypeError):
        a[3] = b"v"
    with pytest.raises(TypeError):
        a["k"] = 3
    # Another handle of the same session sees the same attributes.
    assert client.open(s.sid, "acme").attrs["x"] == b"1"


def test_quota_exceeded(client):
    s = client.open(client.create("acme"), "acme")
    with pytest.raises(shmb.QuotaExceeded) as ei:
        for i in range(100):
            s.attrs[f"k{i}"] = b"v" * 1000
    assert isinstance(ei.value, shmb.Full) and ei.value.name == "SHMB_EQUOTA"


def test_not_found_and_permission(client):
    sid = client.create("acme", "alice")
    with pytest.raises(shmb.NotFound):
        client.open("0" * 32, "acme", "alice")
    with pytest.raises(shmb.PermissionDenied) as ei:
        client.open(sid, "other", "alice")
    assert ei.value.code == -3 and "tenant or principal" in str(ei.value)
    with pytest.raises(shmb.PermissionDenied):
        client.open(sid, "acme", "mallory")
    with pytest.raises(shmb.PermissionDenied):
        client.delete(sid, "other", "alice")
    with pytest.raises(shmb.InvalidArgument):
        client.open("not-a-sid", "acme")
    s = client.open(sid, "acme", "alice")
    cur = s.cursor()
    client.delete(sid, "acme", "alice")
    with pytest.raises(shmb.NotFound):
        client.delete(sid, "acme", "alice")
    with pytest.raises(shmb.NotFound):
        s.publish(b"x")
    with pytest.raises(shmb.NotFound):
        cur.next()


def test_overrun_raised_once_with_count(client):
    s = client.open(client.create("acme"), "acme")
    cur = s.cursor()
    for i in range(100):  # the ring keeps 64 (conftest)
        s.publish(b"%d" % i)
    with pytest.raises(shmb.Overrun) as ei:
        cur.next()
    assert ei.value.lost == 36 and ei.value.code == -6 and cur.lagged == 36
    evs = list(cur)  # raised once: the cursor continues at the oldest kept
    assert [e.id for e in evs] == list(range(37, 101))


def test_too_big_and_future_after(client):
    s = client.open(client.create("acme"), "acme")
    with pytest.raises(shmb.TooBig) as ei:
        s.publish(b"x" * 5000)
    assert isinstance(ei.value, ValueError) and ei.value.code == -5
    assert s.publish(b"x" * 4096) == 1  # the maximum itself is fine (an event of many slots)
    with pytest.raises(shmb.InvalidArgument):
        s.cursor(after=1000)  # a Last-Event-ID from the future
    ev = s.cursor().next()
    assert len(ev.data) == 4096


def test_full(monkeypatch):
    b = Broker(["--max-sessions", "2"])
    try:
        monkeypatch.setenv("SHMB_RUNTIME_DIR", b.runtime_dir)
        with shmb.Client(b.name) as c:
            c.create("t")
            c.create("t")
            with pytest.raises(shmb.Full) as ei:
                c.create("t")
            assert ei.value.name == "SHMB_EFULL"
    finally:
        assert b.stop() == 0
        shutil.rmtree(b.runtime_dir, ignore_errors=True)


def test_broker_unavailable_and_back(broker, client):
    sid = client.create("acme")
    s = client.open(sid, "acme")
    broker.kill()
    # The data path keeps working without the broker; create and delete need it.
    assert s.publish(b"still") == 1
    with pytest.raises(shmb.BrokerUnavailable) as ei:
        client.create("acme")
    assert ei.value.code == -7
    broker.start()  # adopts the segment
    assert len(client.create("acme")) == 32
    assert client.open(sid, "acme").cursor().next().data == b"still"


def test_attach_errors(broker):
    with pytest.raises(shmb.BrokerUnavailable):
        shmb.Client("nosuchinstance")
    with pytest.raises(shmb.InvalidArgument):
        shmb.Client("bad/name")
    with shmb.Client() as c:  # $SHMB_NAME
        assert c.name == broker.name


def test_closed_everything(broker, client):
    sid = client.create("acme")
    s = client.open(sid, "acme")
    cur = s.cursor()
    a = s.attrs
    fol = cur.follow()
    client.close()
    client.close()  # idempotent
    wait_for(lambda: os.getpid() not in broker.attached_pids(), 10, "the worker slot released")
    assert client.closed and s.closed and cur.closed
    for call in (lambda: client.create("acme"), lambda: client.open(sid, "acme"),
                 lambda: client.delete(sid, "acme"), client.fileno, lambda: client.wait(0),
                 lambda: s.publish(b"x"), s.stat, s.subscribe, lambda: s.cursor(),
                 lambda: a["k"], lambda: a.__setitem__("k", b"v"), lambda: len(a),
                 cur.next, lambda: cur.wait(0), lambda: list(cur), cur.follow,
                 lambda: cur.position):
        with pytest.raises(shmb.Closed) as ei:
            call()
        assert "closed" in str(ei.value) and ei.value.code == -1
    with pytest.raises(shmb.Closed):
        with client:
            pass
    del fol


def test_session_close_closes_cursors(client):
    s = client.open(client.create("acme"), "acme")
    cur = s.cursor()
    s.close()
    with pytest.raises(shmb.Closed):
        cur.next()
    cur.close()  # idempotent, no error


def test_objects_keep_parents_alive(broker):
    import gc
    c = shmb.Client(broker.name)
    sid = c.create("acme")
    cur = c.open(sid, "acme").cursor()
    del c
    gc.collect()
    # The cursor holds its session, the session its client: still usable.
    assert cur.session.publish(b"alive") == 1
    assert cur.next().data == b"alive"
    assert os.getpid() in broker.attached_pids()
    del cur  # the last reference: cursor, session and client go, the client detaches
    wait_for(lambda: os.getpid() not in broker.attached_pids(), 10, "the worker slot released")


def test_strerror():
    assert "no such session" in shmb.strerror(-2)
    assert shmb.strerror(12345)


def test_no_worker_slot(monkeypatch):
    from test_fork import run_in_child
    b = Broker(["--max-workers", "1"])
    try:
        monkeypatch.setenv("SHMB_RUNTIME_DIR", b.runtime_dir)
        with shmb.Client(b.name):
            def child():  # a second process: no slot left
                try:
                    shmb.Client(b.name)
                    return "attached"
                except shmb.NoWorkerSlot as e:
                    return (e.name, isinstance(e, shmb.Full))
            assert run_in_child(child) == ("ok", ("SHMB_ENOWORKER", True))
    finally:
        assert b.stop() == 0
        shutil.rmtree(b.runtime_dir, ignore_errors=True)
