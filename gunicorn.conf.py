"""Gunicorn settings for running the web app in production; command-line flags win.

gunicorn --config gunicorn.conf.py wsgi:app
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# gthread keeps client connections alive; one request at a time per process avoids
# contention for the GIL, which showed up as tail latency in bench/signup.py. Four such
# processes per core measured best there (a request spends part of its time waiting on I/O).
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 4))
threads = int(os.environ.get("GUNICORN_THREADS", 1))
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = "-"
# X-Forwarded-* is handled by the app itself (TRUSTED_PROXIES), not by gunicorn.
forwarded_allow_ips = "127.0.0.1"
