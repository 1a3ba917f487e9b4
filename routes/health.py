"""``GET /health``: this instance's and the cluster's health, from state the background threads keep.

It does no network I/O of its own. 503 (``down``) only when this instance's background threads died and will
not come back (so Render restarts it); anything a restart would not fix is ``degraded`` with 200.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("health", __name__)


def health_document(runtime) -> tuple[dict, int]:
    mode = runtime.background_mode
    if mode != "enabled":
        checks = {"poller": mode, "lease": "n/a", "imap": "n/a", "outbox": "n/a", "cluster": "ok"}
        return {"status": "ok", "checks": checks, "version": runtime.version}, 200
    if runtime.threads_dead():
        checks = {"poller": "down", "lease": "n/a", "imap": "n/a", "outbox": "n/a", "cluster": "stale"}
        return {"status": "down", "checks": checks, "version": runtime.version}, 503
    view = runtime.cluster_view() or {}
    checks = {
        "poller": view.get("poller", "standby"),
        "lease": view.get("lease", "standby"),
        "imap": view.get("imap", "n/a"),
        "outbox": view.get("outbox", "n/a"),
        "cluster": view.get("cluster", "ok"),
    }
    degraded = (checks["lease"] == "redis_unreachable" or checks["imap"] in ("unreachable", "auth_failed")
                or checks["outbox"] == "backlog" or checks["cluster"] != "ok")
    return {"status": "degraded" if degraded else "ok", "checks": checks, "version": runtime.version}, 200


@bp.get("/health")
def health():
    document, code = health_document(current_app.extensions["render_signal"])
    response = jsonify(document)
    response.status_code = code
    response.headers["Cache-Control"] = "no-store"
    return response
