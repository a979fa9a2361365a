"""Gunicorn settings for running the web app in production; command-line flags win.

gunicorn --config gunicorn.conf.py wsgi:app
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Sync workers behind a buffering reverse proxy (README): one request per process at a
# time, and each new connection goes to whichever process is free. bench/signup.py measured
# gthread workers with keep-alive as faster on average but with an erratic tail (some
# processes end up holding more connections than others); sync kept p99 steady.
# Four processes per core measured best (a request spends part of its time waiting).
worker_class = "sync"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 4))
# A worker silent for this long is restarted. A long streamed response (a CSV export of a
# million subscribers) is not silent: it reports in after every chunk (post_worker_init).
timeout = 30
graceful_timeout = 30
accesslog = "-"
# X-Forwarded-* is handled by the app itself (TRUSTED_PROXIES), not by gunicorn.
forwarded_allow_ips = "127.0.0.1"


def post_worker_init(worker):
    """Let long streamed responses tell the arbiter this worker is alive (see timeout)."""
    worker.wsgi.config["WORKER_HEARTBEAT"] = worker.notify


def on_starting(server):
    """Refuse several workers that would each keep rate-limit counters of their own: each
    would allow the whole budget (RATELIMIT_STORAGE_URI=memory://; the default is shared)."""
    from service.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    per_process = settings.RATELIMIT_STORAGE_URI.strip().lower().startswith("memory://")
    if per_process and server.cfg.workers > 1:
        raise SystemExit(
            f"RATELIMIT_STORAGE_URI=memory:// counts in each of the {server.cfg.workers} "
            "workers on its own, so every limit would allow that many times its budget: "
            "leave RATELIMIT_STORAGE_URI unset (counters shared through the database), set it "
            "to redis://..., or run one worker (WEB_CONCURRENCY=1)"
        )
