# test_asyncio.py - Cursor.follow() on asyncio: many streams on one loop through the client's
# fd (no thread per stream), published from another process; the end of a session, overruns,
# cancellation, and the one-waiter rule of the client's fd.
import asyncio
import os
import threading

import pytest

import shmb


def publisher_process(broker_name, sids, per):
    """Forks a process that attaches its own Client and publishes `per` events to each sid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with shmb.Client(broker_name) as c:
                handles = [c.open(sid, "acme") for sid in sids]
                for i in range(per):
                    for h in handles:
                        h.publish(b"%d" % i)
            code = 0
        finally:
            os._exit(code)
    return pid


def test_follow_many_streams_one_thread(broker, client):
    n, per = 150, 5
    sids = [client.create("acme") for _ in range(n)]

    async def follow(sid, out):
        cur = client.open(sid, "acme").cursor()
        async for ev in cur.follow():
            out.append(int(ev.data))
            if len(out) == per:
                return

    async def main():
        outs = [[] for _ in range(n)]
        tasks = [asyncio.create_task(follow(sid, out)) for sid, out in zip(sids, outs)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # every follower waits now
        threads = threading.active_count()
        pid = publisher_process(broker.name, sids, per)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert threading.active_count() == threads == 1  # no thread per stream, none at all
        _, st = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(st) == 0
        return outs

    outs = asyncio.run(main())
    assert outs == [list(range(per))] * n


def test_follow_ends_when_session_deleted(client):
    sid = client.create("acme")
    s = client.open(sid, "acme")
    s.publish(b"one")

    async def main():
        got = []
        async def reader():
            async for ev in s.cursor().follow():
                got.append(ev.data)
        t = asyncio.create_task(reader())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        client.delete(sid, "acme")
        await asyncio.wait_for(t, 10)
        return got

    assert asyncio.run(main()) == [b"one"]


def test_follow_overrun_then_continue(client):
    s = client.open(client.create("acme"), "acme")
    cur = s.cursor()
    for i in range(70):  # ring of 64
        s.publish(b"%d" % i)

    async def main():
        fol = cur.follow()
        with pytest.raises(shmb.Overrun) as ei:
            async for ev in fol:
                pass
        assert ei.value.lost == 6
        ev = await fol.__anext__()
        return ev.id

    assert asyncio.run(main()) == 7


def test_follow_cancel_and_client_wait_rule(client):
    s = client.open(client.create("acme"), "acme")
    cur = s.cursor()

    async def main():
        fol = cur.follow()
        t = asyncio.ensure_future(fol.__anext__())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            client.wait(0)  # the loop owns the fd now
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        s.publish(b"after cancel")
        ev = await asyncio.wait_for(fol.__anext__(), 10)
        await fol.aclose()
        return ev.data

    assert asyncio.run(main()) == b"after cancel"


def test_follow_client_closed_fails_followers(broker):
    c = shmb.Client(broker.name)
    s = c.open(c.create("acme"), "acme")

    async def main():
        t = asyncio.ensure_future(s.cursor().follow().__anext__())
        await asyncio.sleep(0)
        c.close()
        with pytest.raises(shmb.Closed):
            await asyncio.wait_for(t, 10)

    asyncio.run(main())


def test_follow_needs_a_running_loop(client):
    cur = client.open(client.create("acme"), "acme").cursor()
    fol = cur.follow()
    with pytest.raises(RuntimeError):
        fol.__anext__()  # nothing there, no running loop


def test_follow_on_one_loop_after_another(client):
    # asyncio.run() twice (a test suite, a server reloading): the client's fd moves to the new
    # loop once nobody waits on the old one, and Client.wait may use it between the two.
    s = client.open(client.create("acme"), "acme")

    async def one(payload):
        cur = s.cursor(after=s.stat().last_event_id)
        t = asyncio.ensure_future(cur.follow().__anext__())
        await asyncio.sleep(0)
        s.publish(payload)
        return (await asyncio.wait_for(t, 10)).data

    assert asyncio.run(one(b"first")) == b"first"
    assert client.wait(0) in (True, False)
    assert asyncio.run(one(b"second")) == b"second"

    async def waiting_elsewhere():
        cur = s.cursor(after=s.stat().last_event_id)
        t = asyncio.ensure_future(cur.follow().__anext__())
        await asyncio.sleep(0)
        # A follower waits on this running loop: another loop in another thread is refused.
        import threading
        err = []

        def other():
            async def try_follow():
                try:
                    await s.cursor(after=s.stat().last_event_id).follow().__anext__()
                except RuntimeError as e:
                    err.append(str(e))
            asyncio.run(try_follow())
        th = threading.Thread(target=other)
        th.start()
        th.join(10)
        t.cancel()
        return err

    err = asyncio.run(waiting_elsewhere())
    assert err and "another running event loop" in err[0]
