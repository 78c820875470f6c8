"""gunicorn configuration for wsgi_app.py: attach to shmbroker in each worker after fork.

    gunicorn -c gunicorn_conf.py --workers 4 wsgi_app:app      (sync workers)
    gunicorn -c gunicorn_conf.py --workers 4 -k gthread --threads 8 wsgi_app:app
"""
bind = "127.0.0.1:8000"
# No `timeout = 0`: a stream's loop reports to the arbiter (worker.notify) every second, so a
# sync worker serving a long stream is not killed, and a hung worker of any class still is.


# (Every top-level name here is read as a setting, and `wsgi_app` is one: import inside the hooks.)
def post_fork(server, worker):
    import wsgi_app as app
    # A Client made before fork() would raise shmb.ForkError here; streams end (within a second)
    # when the worker is told to stop, so a graceful shutdown does not wait for them.
    app.attach(lambda: not worker.alive, worker.notify)


def worker_exit(server, worker):
    import wsgi_app as app
    app.detach()
