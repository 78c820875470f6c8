"""Server-Sent Events over shmbroker for uvicorn (asyncio): the routes of wsgi_app.py, with the
streams followed on the event loop through the client's fd (cursor.follow()), never a thread
per stream.

    uvicorn --workers 2 --app-dir client/python/examples asgi_app:app

Each worker process attaches at lifespan startup (or, when the broker was down then, at its
first request: a worker that cannot start would take the server down). A body above MAX_BODY
gets 413 (not read), what needs the broker while it is down 503.
"""
import asyncio
import json
import os
import re

import shmb

ROUTE = re.compile(r"^/sessions(?:/([0-9a-f]{32})/events)?$")
MAX_BODY = 1 << 20  # bytes of a POST read at most (the broker refuses above max_event_bytes)
client = None  # this worker's shmb.Client


def get_client():
    """This worker's client, attached now if the broker was down so far."""
    global client
    if client is None:
        client = shmb.Client()  # (a broker round trip of a few ms, only after an outage)
    return client


def drop_client(stale):
    """The broker was restarted on a new segment (shmb.Stale): close the client (its streams
    end) so that the next request attaches to the new one. A process shares one attachment per
    broker name, so a new Client() made while the stale one is open would be stale too."""
    global client
    if client is stale:
        client = None
        stale.close()


async def reply(send, status, obj):
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"x-worker-pid", str(os.getpid()).encode()),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def stream(send, cur):
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
        (b"x-worker-pid", str(os.getpid()).encode())]})
    fol = cur.follow()
    while True:
        try:
            async for ev in fol:
                if not ev.gap:
                    lines = b"".join(b"data: %s\n" % ln for ln in ev.data.split(b"\n"))
                    await send({"type": "http.response.body", "more_body": True,
                                "body": b"id: %d\n%s\n" % (ev.id, lines)})
            break  # the session ended
        except shmb.Overrun as e:
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"event: lagged\ndata: %d\n\n" % e.lost})
    await send({"type": "http.response.body", "body": b""})


async def until_disconnect(receive):
    while (await receive())["type"] != "http.disconnect":
        pass


async def http(scope, receive, send):
    m = ROUTE.match(scope["path"])
    headers = dict(scope["headers"])
    tenant = headers.get(b"x-tenant", b"").decode()
    method = scope["method"]
    if not m:
        return await reply(send, 404, {"error": "no such route"})
    if not tenant:
        return await reply(send, 400, {"error": "X-Tenant missing"})
    sid = m.group(1)
    try:
        client = get_client()
        if sid is None and method == "POST":
            return await reply(send, 201, {"sid": client.create(tenant)})
        if sid and method == "POST":
            if int(headers.get(b"content-length", b"0")) > MAX_BODY:
                return await reply(send, 413, {"error": "body above %d bytes" % MAX_BODY})
            parts, size, more = [], 0, True
            while more:
                msg = await receive()
                parts.append(msg.get("body", b""))
                size, more = size + len(parts[-1]), msg.get("more_body", False)
                if size > MAX_BODY:
                    return await reply(send, 413, {"error": "body above %d bytes" % MAX_BODY})
            body = b"".join(parts)
            with client.open(sid, tenant) as s:
                return await reply(send, 200, {"id": s.publish(body)})
        if sid and method == "GET":
            after = int(headers.get(b"last-event-id", b"0"))
            with client.open(sid, tenant) as s, s.cursor(after=after) as cur:
                tasks = [asyncio.ensure_future(stream(send, cur)),
                         asyncio.ensure_future(until_disconnect(receive))]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return
    except shmb.PermissionDenied:
        return await reply(send, 403, {"error": "wrong tenant"})
    except shmb.NotFound:
        return await reply(send, 404, {"error": "no such session"})
    except shmb.TooBig as e:
        return await reply(send, 413, {"error": str(e)})
    except (shmb.BrokerUnavailable, shmb.Full) as e:  # down, restarting, or out of slots
        return await reply(send, 503, {"error": str(e)})
    except shmb.Stale as e:  # a new broker, a new segment: attach again at the next request
        drop_client(client)
        return await reply(send, 503, {"error": str(e)})
    except (shmb.InvalidArgument, ValueError) as e:
        return await reply(send, 400, {"error": str(e)})
    await reply(send, 405, {"error": "method not allowed"})


async def app(scope, receive, send):
    global client
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    client = shmb.Client()  # in this worker process
                except shmb.BrokerUnavailable:
                    pass  # attached by the first request that needs it (get_client)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if client is not None:
                    client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await http(scope, receive, send)
