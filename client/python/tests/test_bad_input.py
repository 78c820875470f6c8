# test_bad_input.py - wrong types, None, huge and out-of-range values, oversize data: each gets
# a clear exception, changes nothing, and never crashes the interpreter.
import pytest

import shmb


def test_publish_bad_arguments(client):
    s = client.open(client.create("acme"), "acme")
    for data in (None, 123, 1.5, ["x"], object()):
        with pytest.raises(TypeError, match="data must be bytes or str"):
            s.publish(data)
    for kw, err in (({"stream": -1}, ValueError), ({"stream": 2**32}, ValueError),
                    ({"stream": 2**200}, ValueError), ({"kind": 65536}, ValueError),
                    ({"kind": -1}, ValueError), ({"kind": "1"}, TypeError),
                    ({"stream": None}, TypeError), ({"bogus": 1}, TypeError)):
        with pytest.raises(err):
            s.publish(b"x", **kw)
    with pytest.raises(TypeError):
        s.publish()
    with pytest.raises(TypeError):
        s.publish(b"x", 0, 1, 2)
    with pytest.raises(TypeError):
        s.publish(b"x", 0, stream=1)
    with pytest.raises(shmb.TooBig):
        s.publish(b"x" * (64 << 20))  # 64 MiB
    assert s.stat().last_event_id == 0  # nothing was published


def test_client_bad_arguments(client):
    for bad in (None, 5, b"acme"):
        with pytest.raises(TypeError):
            client.create(bad)
    with pytest.raises(shmb.InvalidArgument):
        client.create("t" * 10_000)
    with pytest.raises(shmb.InvalidArgument):
        client.create("")
    with pytest.raises(ValueError, match="NUL"):
        client.create("ac\0me")
    with pytest.raises(TypeError):
        client.create("acme", principal=5)
    with pytest.raises(TypeError):
        client.open(None, "acme")
    with pytest.raises(TypeError):
        client.open("0" * 32, None)
    with pytest.raises(shmb.InvalidArgument):
        client.open("0" * 31 + "g", "acme")
    with pytest.raises(shmb.InvalidArgument):
        client.open("0" * 10_000, "acme")
    with pytest.raises(TypeError):
        client.delete("0" * 32)
    with pytest.raises(TypeError):
        shmb.Client(123)
    with pytest.raises(shmb.InvalidArgument):
        shmb.Client("n" * 5000)
    with pytest.raises(TypeError):
        client.wait(timeout=[])


def test_cursor_bad_arguments(client):
    s = client.open(client.create("acme"), "acme")
    for after, err in ((-1, ValueError), (2**64, ValueError), ("1", TypeError), (1.0, TypeError)):
        with pytest.raises(err):
            s.cursor(after=after)
    with pytest.raises(ValueError):
        s.cursor(stream=-1)
    with pytest.raises(TypeError):
        s.cursor(stream="0")
    cur = s.cursor()
    s.publish(b"x")
    # Huge timeouts are "forever" (inf too), not an overflow: news is there, so they return.
    assert cur.wait(1e300) is True and cur.wait(float("inf")) is True
    assert cur.wait(2**80) is True


def test_types_not_constructible():
    for t in (shmb.Session, shmb.Cursor, shmb.Event, shmb.Follow):
        with pytest.raises(TypeError):
            t()
    with pytest.raises(TypeError):
        shmb.Attrs(None)
    with pytest.raises(TypeError):
        shmb.Attrs(object())
