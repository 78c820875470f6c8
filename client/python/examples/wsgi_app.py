"""Server-Sent Events over shmbroker for gunicorn (sync or gthread workers): any worker serves
any request of a session, and a stream cut anywhere resumes on any worker with Last-Event-ID.

    shmbrokerd &                      # or: shmbrokerd --name NAME, and SHMB_NAME=NAME below
    gunicorn -c gunicorn_conf.py --workers 4 --worker-class gthread --threads 8 wsgi_app:app

    POST /sessions                    -> 201 {"sid": ...}        (X-Tenant: the tenant)
    POST /sessions/<sid>/events       -> 200 {"id": N}           (the body is the event's data)
    GET  /sessions/<sid>/events       -> text/event-stream       (Last-Event-ID: resume after N)

Every response says which worker served it (X-Worker-Pid); a wrong X-Tenant gets 403. The
shmb.Client is made in each worker after fork (gunicorn_conf.py's post_fork calls attach()).
"""
import json
import os
import re

import shmb

KEEPALIVE = 15.0  # seconds of silence before an SSE comment line (finds gone clients)
ROUTE = re.compile(r"^/sessions(?:/([0-9a-f]{32})/events)?$")
client = None  # this worker's shmb.Client
stopping = bool  # () -> True once the worker shuts down: streams end then


def attach(worker_stopping=bool):
    global client, stopping
    client, stopping = shmb.Client(), worker_stopping


def detach():
    if client is not None:
        client.close()


def sse(cur):
    """The stream: what is there, then what comes, until the session ends."""
    try:
        yield b": stream\n\n"  # gunicorn sends the headers with the first body bytes
        quiet = 0.0
        while not stopping():
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
        if sid is None and method == "POST":
            return reply("201 Created", {"sid": client.create(tenant)})
        if sid and method == "POST":
            data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
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
    except (shmb.InvalidArgument, shmb.TooBig, ValueError) as e:
        return reply("400 Bad Request", {"error": str(e)})
    return reply("405 Method Not Allowed", {"error": "method not allowed"})
