"""Gunicorn configuration: `gunicorn -c gunicorn.conf.py app:app`.

Settings are validated here, in the master, before any port is bound: a bad value prints one
``CONFIG: <VAR>: <reason>`` line and exits with code 3. Options given on Gunicorn's command line still win
over the values below (Gunicorn applies the command line after this file).

The background machinery (lease keeper, poller, delivery loop) starts in each worker after it has initialised
(`post_worker_init`) and stops when the worker exits (`worker_exit`): never in the master, never at import,
whatever `--preload` says. Which worker actually polls is decided by the lease.

Shutdown budgets, outermost first (a redeploy never cuts a webhook attempt in half):
Render's SIGTERM grace (render.yaml `maxShutdownDelaySeconds: 60`) > `graceful_timeout` (50 s)
> background join timeout (45 s) > one webhook attempt (`WEBHOOK_TIMEOUT_SECONDS`, at most 40 s).
"""

import os

import settings as _settings_module
from log_setup import logging_config_dict, register_secrets

_settings = _settings_module.load_settings_or_exit(os.environ)
register_secrets(_settings.secret_values(), own_addresses=[_settings.email_address or ""])

bind = f"0.0.0.0:{_settings.port}"
workers = _settings.web_concurrency
threads = _settings.gunicorn_threads
worker_class = "gthread"
# The graceful budget must exceed the background threads' join timeout (see settings.py).
graceful_timeout = _settings_module.GUNICORN_GRACEFUL_TIMEOUT_SECONDS
timeout = 60
keepalive = 5
# Recycle workers now and then (bounded memory growth); the lease moves to a standby worker by itself.
max_requests = 5000
max_requests_jitter = 500
control_socket_disable = True
logconfig_dict = logging_config_dict(_settings.log_format, _settings.log_level)
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


def _runtime(worker):
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", None) or {}
    return extensions.get("render_signal")


def post_worker_init(worker):
    runtime = _runtime(worker)
    if runtime is not None:
        runtime.start_background(worker_id=worker.age)


def worker_exit(server, worker):
    runtime = _runtime(worker)
    if runtime is not None:
        runtime.stop_background(timeout=_settings_module.BACKGROUND_JOIN_TIMEOUT_SECONDS)
