"""``GET /health``: this instance's and the cluster's health, from state the background threads keep.

A thin route: the rules (checks, ok / degraded / down, problems, and 503 only when a restart would help) are
``background.health``'s. It does no network I/O of its own: it reads the status observer's cached view, through the
app's ``StatusSource``.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from background.health import Health, assess
from background.status_source import StatusSource
from routes import status_source

bp = Blueprint("health", __name__)


def assess_source(source: StatusSource) -> Health:
    """This instance's health from its background mode, its threads and the observer's cached view (no I/O)."""
    return assess(mode=source.background_mode, threads_dead=source.threads_dead(), view=source.cluster_view())


def health_document(source: StatusSource) -> tuple[dict, int]:
    """``(/health's JSON document, HTTP status)``."""
    health = assess_source(source)
    document = {"status": health.status, "checks": health.checks, "problems": health.problem_dicts(),
                "version": source.version}
    return document, health.http_status


@bp.get("/health")
def health():
    document, code = health_document(status_source())
    response = jsonify(document)
    response.status_code = code
    response.headers["Cache-Control"] = "no-store"
    return response
