"""``GET /health``: this instance's and the cluster's health, from state the background threads keep.

A thin route: the rules (checks, ok / degraded / down, problems, and 503 only when a restart would help) are
``background.health``'s. It does no network I/O of its own: it reads the status observer's cached view.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from background.health import Health, assess

bp = Blueprint("health", __name__)


def assess_runtime(runtime) -> Health:
    """This instance's health from its background mode, its threads and the observer's cached view (no I/O)."""
    return assess(mode=runtime.background_mode, threads_dead=runtime.threads_dead(), view=runtime.cluster_view())


def health_document(runtime) -> tuple[dict, int]:
    """``(/health's JSON document, HTTP status)``."""
    health = assess_runtime(runtime)
    document = {"status": health.status, "checks": health.checks, "problems": health.problem_dicts(),
                "version": runtime.version}
    return document, health.http_status


@bp.get("/health")
def health():
    document, code = health_document(current_app.extensions["render_signal"])
    response = jsonify(document)
    response.status_code = code
    response.headers["Cache-Control"] = "no-store"
    return response
