# test_fork.py - a Client made before fork() fails clearly in the child (ForkError, also for its
# sessions, cursors and followers), never touches the parent's state, and a Client made in the
# child works; the parent's objects keep working.
import asyncio
import os
import pickle

import shmb


def run_in_child(fn):
    """Forks; the child runs fn() and sends its result (or exception repr) back; returns it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = ("ok", fn())
        except BaseException as e:  # report anything
            out = ("raised", repr(e))
        os.write(w, pickle.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 0
    return pickle.loads(data)


def test_inherited_client_raises_in_child(broker, client):
    sid = client.create("acme")
    s = client.open(sid, "acme")
    cur = s.cursor()

    def child():
        seen = []
        for name, call in (("create", lambda: client.create("acme")),
                           ("open", lambda: client.open(sid, "acme")),
                           ("publish", lambda: s.publish(b"from child")),
                           ("next", cur.next), ("wait", lambda: cur.wait(0)),
                           ("client.wait", lambda: client.wait(0)),
                           ("attrs", lambda: s.attrs.get("k")),
                           ("fileno", client.fileno)):
            try:
                call()
                seen.append((name, "no error"))
            except shmb.ForkError as e:
                assert e.code == -19 and "fork" in str(e)
                seen.append((name, "ForkError"))
        client.close()  # frees the child's memory only; never waits for the parent's threads
        with shmb.Client(broker.name) as mine:  # the child attaches its own
            mine.open(sid, "acme").publish(b"child's own")
        return seen

    status, seen = run_in_child(child)
    assert status == "ok", seen
    assert all(v == "ForkError" for _, v in seen), seen
    # The parent is untouched and sees the child's event.
    assert s.publish(b"parent") == 2
    assert [e.data for e in cur] == [b"child's own", b"parent"]


def test_fork_in_the_middle_of_follow(broker, client):
    s = client.open(client.create("acme"), "acme")
    cur = s.cursor()

    async def main():
        fol = cur.follow()
        task = asyncio.ensure_future(fol.__anext__())
        await asyncio.sleep(0)  # the follower files its future and the fd is registered
        assert not task.done()

        def child():
            # A new loop in the child: the inherited follower fails with ForkError at once.
            async def again():
                try:
                    await fol.__anext__()
                except shmb.ForkError:
                    return "ForkError"
                return "no error"
            res = asyncio.new_event_loop().run_until_complete(again())
            client._dispatch()  # the inherited reader callback: fails the followers, no crash
            return res

        assert run_in_child(child) == ("ok", "ForkError")
        s.publish(b"after fork")
        ev = await asyncio.wait_for(task, 10)
        return ev.data

    assert asyncio.run(main()) == b"after fork"
