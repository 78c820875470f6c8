"""Server-Sent Events over shmbroker for gunicorn (sync or gthread workers): any worker serves
any request of a session, and a stream cut anywhere resumes on any worker with Last-Event-ID.

    shmbrokerd &                      # or: shmbrokerd --name NAME, and SHMB_NAME=NAME below
    gunicorn -c gunicorn_conf.py --workers 4 --worker-class gthread --threads 8 wsgi_app:app

    POST /sessions                    -> 201 {"sid": ...}        (X-Tenant: the tenant)
    POST /sessions/<sid>/events       -> 200 {"id": N}           (the body is the event's data)
    GET  /sessions/<sid>/events       -> text/event-stream       (Last-Event-ID: resume after N)

Every response says which worker served it (X-Worker-Pid); a wrong X-Tenant gets 403, a body
above MAX_BODY 413 (unread), and what needs the broker while it is down (create; attaching) 503.
The shmb.Client is made in each worker after fork (gunicorn_conf.py's post_fork calls attach());
a worker started while the broker is down boots all the same and attaches at its first request
(gunicorn stops the whole server when a worker fails to boot).
"""
import json
import os
import re
import threading

import shmb

KEEPALIVE = 15.0  # seconds of silence before an SSE comment line (finds gone clients)
MAX_BODY = 1 << 20  # bytes of a POST read at most (the broker refuses above max_event_bytes)
ROUTE = re.compile(r"^/sessions(?:/([0-9a-f]{32})/events)?$")
client = None  # this worker's shmb.Client
stopping = bool  # () -> True once the worker shuts down: streams end then
heartbeat = bool  # () -> None: tells gunicorn's arbiter this worker is alive (worker.notify)
_attaching = threading.Lock()


def attach(worker_stopping=bool, worker_heartbeat=bool):
    global stopping, heartbeat
    stopping = worker_stopping
    heartbeat = worker_heartbeat
    try:
        get_client()
    except shmb.BrokerUnavailable:
        pass  # the first request that needs the client attaches (503 until the broker is back)


def get_client():
    """This worker's client, attached now if the broker was down so far."""
    global client
    with _attaching:
        if client is None:
            client = shmb.Client()
        return client


def drop_client(stale):
    """The broker was restarted on a new segment (shmb.Stale): close the client (its streams
    end) so that the next request attaches to the new one. A process shares one attachment per
    broker name, so a new Client() made while the stale one is open would be stale too."""
    global client
    with _attaching:
        if client is stale:
            client = None
            stale.close()


def detach():
    if client is not None:
        client.close()


def sse(cur):
    """The stream: what is there, then what comes, until the session ends."""
    try:
        yield b": stream\n\n"  # gunicorn sends the headers with the first body bytes
        quiet = 0.0
        while not stopping():
            # A sync worker is inside this loop for the whole stream: without a heartbeat the
            # arbiter would kill it after --timeout (and one that hangs must still be killed).
            heartbeat()
            try:
                ev = cur.next()
                if ev is None and cur.wait(1.0):  # this thread only, GIL released
                    quiet = 0.0
                    continue
            except shmb.Overrun as e:  # fell behind the ring: say how much was lost
                yield b"event: lagged\ndata: %d\n\n" % e.lost
                continue
            except (shmb.NotFound, shmb.Closed, shmb.Stale):
                return  # the session ended, the worker is detaching, or the broker went away
            if ev is None:
                if (quiet := quiet + 1.0) >= KEEPALIVE:
                    quiet = 0.0
                    yield b": keepalive\n\n"
            elif not ev.gap:
                lines = b"".join(b"data: %s\n" % line for line in ev.data.split(b"\n"))
                yield b"id: %d\n%s\n" % (ev.id, lines)
    finally:
        session = cur.session
        cur.close()
        session.close()


def app(environ, start_response):
    pid = str(os.getpid())

    def reply(status, obj):
        body = json.dumps(obj).encode()
        start_response(status, [("Content-Type", "application/json"), ("X-Worker-Pid", pid),
                                ("Content-Length", str(len(body)))])
        return [body]

    m = ROUTE.match(environ.get("PATH_INFO", ""))
    method, tenant = environ["REQUEST_METHOD"], environ.get("HTTP_X_TENANT")
    if not m:
        return reply("404 Not Found", {"error": "no such route"})
    if not tenant:
        return reply("400 Bad Request", {"error": "X-Tenant missing"})
    sid = m.group(1)
    try:
        client = get_client()
        if sid is None and method == "POST":
            return reply("201 Created", {"sid": client.create(tenant)})
        if sid and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or -1)  # -1: chunked, read to the end
            if length > MAX_BODY:
                return reply("413 Content Too Large", {"error": "body above %d bytes" % MAX_BODY})
            data = environ["wsgi.input"].read(length if length >= 0 else MAX_BODY + 1)
            if len(data) > MAX_BODY:
                return reply("413 Content Too Large", {"error": "body above %d bytes" % MAX_BODY})
            with client.open(sid, tenant) as s:
                return reply("200 OK", {"id": s.publish(data)})
        if sid and method == "GET":
            after = int(environ.get("HTTP_LAST_EVENT_ID") or 0)
            s = client.open(sid, tenant)
            try:
                cur = s.cursor(after=after)
            except BaseException:
                s.close()
                raise
            start_response("200 OK", [("Content-Type", "text/event-stream"),
                                      ("Cache-Control", "no-cache"), ("X-Worker-Pid", pid)])
            return sse(cur)
    except shmb.PermissionDenied:
        return reply("403 Forbidden", {"error": "wrong tenant"})
    except shmb.NotFound:
        return reply("404 Not Found", {"error": "no such session"})
    except shmb.TooBig as e:
        return reply("413 Content Too Large", {"error": str(e)})
    except (shmb.BrokerUnavailable, shmb.Full) as e:  # down, restarting, or out of slots
        return reply("503 Service Unavailable", {"error": str(e)})
    except shmb.Stale as e:  # a new broker, a new segment: attach again at the next request
        drop_client(client)
        return reply("503 Service Unavailable", {"error": str(e)})
    except (shmb.InvalidArgument, ValueError) as e:
        return reply("400 Bad Request", {"error": str(e)})
    return reply("405 Method Not Allowed", {"error": "method not allowed"})
