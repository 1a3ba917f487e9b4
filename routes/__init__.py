"""HTTP routes: /health (always), /api/status, /metrics and / (the operator surface), the login form (routes/access.py)
and the operator API (routes/actions.py), each a blueprint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, current_app

from background.status_source import StatusSource

if TYPE_CHECKING:
    from background.operator_actions import OperatorSource
    from routes.access import SessionKeys

# The app extensions the routes read; the CLI commands read the runtime itself, under "render_signal".
STATUS_SOURCE_KEY = "render_signal.status"
OPERATOR_SOURCE_KEY = "render_signal.operator"
SESSION_KEYS_KEY = "render_signal.session_keys"


def register_routes(app: Flask, source: StatusSource, operator: OperatorSource | None = None) -> None:
    """Attach every blueprint; their views read ``source`` and ``operator`` (from ``app.extensions``) per request.
    Without ``operator`` (an app over a status source alone) the operator API has no admin token: its routes are
    404."""
    from background.operator_actions import OperatorSource
    from routes.access import SessionKeys
    from routes.access import bp as access_bp
    from routes.actions import bp as actions_bp
    from routes.console import bp as console_bp
    from routes.health import bp as health_bp
    from routes.operator import bp as operator_bp
    from routes.sign_in import bp as sign_in_bp

    if operator is None:
        operator = OperatorSource(status_api_token=source.status_api_token, open_store=source.open_store,
                                  targets=source.targets)
    app.extensions[STATUS_SOURCE_KEY] = source
    app.extensions[OPERATOR_SOURCE_KEY] = operator
    app.extensions[SESSION_KEYS_KEY] = SessionKeys(admin_token=operator.admin_api_token,
                                                   status_token=operator.status_api_token,
                                                   session_secret=operator.session_secret)
    app.register_blueprint(sign_in_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(operator_bp)
    app.register_blueprint(access_bp)
    app.register_blueprint(actions_bp)
    app.register_blueprint(console_bp)


def status_source() -> StatusSource:
    """The status source of the app handling this request."""
    return current_app.extensions[STATUS_SOURCE_KEY]


def operator_source() -> OperatorSource:
    """The operator source (tokens, store, targets, mailboxes, sender factory) of the app handling this request."""
    return current_app.extensions[OPERATOR_SOURCE_KEY]


def session_keys() -> SessionKeys:
    """The session-cookie keys of the app handling this request (derived once, when the app was built)."""
    return current_app.extensions[SESSION_KEYS_KEY]
