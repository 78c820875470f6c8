# test_multihost.py - the multi-host wrappers (docs/multi-host.md) against real brokers:
# Client.node_id of a broker started with --node-id (and 0 without one), shmb.sid_node on its
# session ids and on bad input, and Client.restore: an image with events on two streams, a gap
# (given, and ids the image has no event for), attributes and a principal is opened and read
# back equal, the next publish continues after last_event_id, a second restore of the same id
# raises Conflict, and bad images raise TypeError / ValueError / the library's error and change
# nothing, and restore releases the GIL while it waits on a stalled broker.
import time

import pytest

import shmb
from conftest import serve


@pytest.fixture
def node7(monkeypatch):
    yield from serve(monkeypatch, ["--node-id", "7"])


SID = "0007" + "ab" * 14


def image(**over):
    now = int(time.time() * 1000)
    img = dict(created_at_ms=now - 5000, last_accessed_at_ms=now - 1000,
               inactivity_ttl_ms=3_600_000, absolute_ttl_ms=0, last_event_id=6,
               events=[(1, 0, 1, now - 4000, b"one"),
                       (2, 5, 9, now - 3000, b"\x00two\xff"),
                       (3, 0, 1, now - 2500, None, True),
                       (5, 5, 2, now - 2000, "five")],
               attrs={"user": b"alice", "cart": b"\x01\x02"})
    img.update(over)
    return img


def test_node_id_and_sid_node(node7):
    with shmb.Client(node7.name) as c:
        assert c.node_id == 7
        sids = [c.create("t") for _ in range(8)]
        assert all(s.startswith("0007") for s in sids)
        assert {shmb.sid_node(s) for s in sids} == {7}
        assert shmb.sid_node(sids[0].upper()) == 7
        c.close()
        with pytest.raises(shmb.Closed):
            c.node_id
    with pytest.raises(AttributeError):
        c.node_id = 3
    assert shmb.sid_node("ffff" + "0" * 28) == 65535
    for bad in ("", "xyz", "0007", "0007" + "g" * 28, "0" * 33):
        with pytest.raises(shmb.InvalidArgument) as ei:
            shmb.sid_node(bad)
        assert isinstance(ei.value, ValueError)
    for bad in (None, 7, b"0007" + b"0" * 28):
        with pytest.raises(TypeError):
            shmb.sid_node(bad)
    with pytest.raises(ValueError):
        shmb.sid_node("0007\x00" + "0" * 27)


def test_node_id_without_one(client):
    assert client.node_id == 0


def test_restore_reads_back_equal(node7):
    img = image()
    with shmb.Client(node7.name) as c:
        assert c.restore(SID, "t1", "alice", **img) == 0
        with pytest.raises(shmb.PermissionDenied):
            c.open(SID, "t1", "bob")
        s = c.open(SID, "t1", "alice")
        st = s.stat()
        assert (st.sid, st.tenant, st.principal) == (SID, "t1", "alice")
        assert st.created_at_ms == img["created_at_ms"]
        assert st.inactivity_ttl_ms == 3_600_000 and st.absolute_ttl_ms == 0
        assert st.last_event_id == 6
        got = [(e.id, e.stream, e.kind, e.ts_ms, e.data, e.gap) for e in s.cursor()]
        want = {1: (0, 1, b"one"), 2: (5, 9, b"\x00two\xff"), 5: (5, 2, b"five")}
        real = [g for g in got if not g[5]]
        assert [(g[0], g[1], g[2], g[4]) for g in real] == [(i, *want[i][:2], want[i][2])
                                                           for i in (1, 2, 5)]
        ts = {e[0]: e[3] for e in img["events"]}
        assert all(g[3] == ts[g[0]] for g in real)
        assert all(g[0] in (3, 4, 6) for g in got if g[5])  # gaps: given, and missing ids
        assert [e.id for e in s.cursor(stream=5) if not e.gap] == [2, 5]
        assert dict(s.attrs) == {"user": b"alice", "cart": b"\x01\x02"}
        assert s.attrs.get_with_version("user") == (b"alice", 1)
        assert s.publish(b"next", stream=5) == 7
        # A restored session's own events read back as Event objects: they restore too.
        evs = list(s.cursor())  # gaps included
        sid2 = "0007" + "cd" * 14
        assert c.restore(sid2, "t1", **image(events=evs, last_event_id=7, attrs=None)) == 0
        s2 = c.open(sid2, "t1")
        fields = lambda e: (e.id, e.stream, e.kind, e.ts_ms, e.data, e.gap)  # noqa: E731
        assert [fields(e) for e in s2.cursor()] == [fields(e) for e in evs]
        assert s2.principal is None and len(s2.attrs) == 0
        # A second restore of the same id: Conflict (open it then); the session is unchanged.
        with pytest.raises(shmb.Conflict) as ei:
            c.restore(SID, "t1", "alice", **image(events=[], last_event_id=1))
        assert ei.value.name == "SHMB_ECONFLICT"
        assert c.open(SID, "t1", "alice").stat().last_event_id == 7


def test_restore_leaves_out_events_older_than_the_ring(node7):
    with shmb.Client(node7.name) as c:
        now = int(time.time() * 1000)
        evs = [(i, 0, 1, now, b"x%d" % i) for i in range(1, 101)]
        left = c.restore(SID, "t", **image(events=evs, last_event_id=100, attrs=None))
        assert left == 100 - 64  # --ring-events 64 (conftest.DEFAULT_ARGS)
        s = c.open(SID, "t")
        with pytest.raises(shmb.Overrun):
            s.cursor().next()
        assert [e.data for e in s.cursor(after=36)][:2] == [b"x37", b"x38"]


BAD = [
    # (overrides, exception)
    (dict(created_at_ms="1"), TypeError),
    (dict(created_at_ms=0), ValueError),
    (dict(created_at_ms=-5), ValueError),
    (dict(last_accessed_at_ms=(1 << 53) + 1), ValueError),
    (dict(inactivity_ttl_ms=-1), ValueError),
    (dict(absolute_ttl_ms=1.5), TypeError),
    (dict(last_event_id=2 ** 64), ValueError),
    (dict(last_event_id="1"), TypeError),
    (dict(last_event_id=4), shmb.InvalidArgument),  # an event id above it
    (dict(events=5), TypeError),
    (dict(events=[(1, 0, 1, 0)]), TypeError),
    (dict(events=[(1, 0, 1, 0, b"", False, 9)]), TypeError),
    (dict(events=[object()]), TypeError),
    (dict(events=[(0, 0, 1, 0, b"x")]), ValueError),
    (dict(events=[(1, -1, 1, 0, b"x")]), ValueError),
    (dict(events=[(1, 2 ** 32, 1, 0, b"x")]), ValueError),
    (dict(events=[(1, 0, 65536, 0, b"x")]), ValueError),
    (dict(events=[(1, 0, 1, -1, b"x")]), ValueError),
    (dict(events=[(1, 0, 1, 0, 42)]), TypeError),
    (dict(events=[(1, 0, 1, 0, None)]), TypeError),
    (dict(events=[(2, 0, 1, 0, b"a"), (1, 0, 1, 0, b"b")]), shmb.InvalidArgument),
    (dict(events=[(1, 0, 1, 0, b"x" * 4097)]), shmb.TooBig),  # --max-event-bytes 4096
    (dict(attrs=[("k", b"v")]), TypeError),
    (dict(attrs={1: b"v"}), TypeError),
    (dict(attrs={"k": 5}), TypeError),
    (dict(attrs={"k" * 65: b"v"}), shmb.InvalidArgument),
    (dict(attrs={"k": b"v" * (shmb.ATTR_MAX + 1)}), shmb.TooBig),
]


@pytest.mark.parametrize("over,exc", BAD)
def test_bad_images_change_nothing(node7, over, exc):
    with shmb.Client(node7.name) as c:
        with pytest.raises(exc):
            c.restore(SID, "t", **image(**over))
        with pytest.raises(shmb.NotFound):
            c.open(SID, "t")
        assert c.restore(SID, "t", **image()) == 0  # the same id is still free


def test_bad_arguments(node7):
    with shmb.Client(node7.name) as c:
        img = image()
        with pytest.raises(TypeError):
            c.restore(SID, "t")  # the required keywords
        with pytest.raises(TypeError):
            c.restore(None, "t", **img)
        with pytest.raises(TypeError):
            c.restore(SID, b"t", **img)
        with pytest.raises(shmb.InvalidArgument):
            c.restore("0007", "t", **img)
        with pytest.raises(shmb.InvalidArgument):
            c.restore(SID, "", **img)
        with pytest.raises(shmb.NotFound):
            c.open(SID, "t")
        c.close()
        with pytest.raises(shmb.Closed):
            c.restore(SID, "t", **img)


def test_restore_releases_the_gil_while_the_broker_stalls(node7, monkeypatch):
    """restore waits on the broker with the GIL released: with the broker stopped (SIGSTOP) it
    raises BrokerUnavailable after the control timeout while another thread keeps running."""
    import signal
    import threading
    monkeypatch.setenv("SHMB_CTL_TIMEOUT_MS", "300")  # read by libshmb at attach
    with shmb.Client(node7.name) as c:
        ticks, stop = [0], threading.Event()

        def tick():
            while not stop.wait(0.01):
                ticks[0] += 1
        t = threading.Thread(target=tick)
        node7.proc.send_signal(signal.SIGSTOP)
        try:
            t.start()
            t0 = time.monotonic()
            with pytest.raises(shmb.BrokerUnavailable):
                c.restore(SID, "t", **image())
            took = time.monotonic() - t0
        finally:
            stop.set()
            node7.proc.send_signal(signal.SIGCONT)
            t.join()
        assert took >= 0.25, f"raised after {took:.3f} s"
        assert ticks[0] >= 10, f"the other thread ran {ticks[0]} ticks meanwhile"
        # The broker, running again, finishes or undoes it: a count, or Conflict (then open).
        try:
            assert c.restore(SID, "t", **image()) == 0
        except shmb.Conflict:
            pass
        assert c.open(SID, "t").stat().last_event_id == 6
