"""The operator surface besides ``/health``: ``GET /api/status`` (JSON), ``GET /metrics`` (Prometheus) and ``GET /``.

All three render the one status document of ``routes.status_view``, so they always agree. ``/api/status`` needs
``STATUS_API_TOKEN`` (``Authorization: Bearer`` or ``X-API-Key``) and is 404 without a configured token;
``/metrics`` needs it when one is configured and is open otherwise (scrapers on a private network); ``/`` asks for
HTTP Basic credentials (any user name, the token as password) and shows only the ``/health`` summary when no token
is configured. Tokens are compared in constant time on bytes. The metrics come from a ``CollectorRegistry`` built
per request from the document (never the process-global registry, whose counters would differ per worker). Any
error answers JSON 500 without internals; the traceback goes to the (scrubbed) log.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import math
from typing import Any, Callable, Iterator

from flask import Flask, Response, current_app, jsonify, request

from routes.status_view import KNOWN_COUNTERS, LABELLED_COUNTERS, RECENT_LIMIT, build_status

logger = logging.getLogger(__name__)

REALM = "render-signal"
METRIC_PREFIX = "render_signal_"
COMMON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


# --- authentication -------------------------------------------------------------------------------------------------

def _header_bytes(value: str) -> bytes:
    # WSGI hands header values over as latin-1 decoded text: re-encoding gives the bytes the client sent.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _same_secret(presented: bytes, expected: str) -> bool:
    return hmac.compare_digest(presented, expected.encode("utf-8"))


def _api_credentials_ok(expected: str) -> bool:
    """``Authorization: Bearer <token>`` or ``X-API-Key: <token>``."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        if _same_secret(_header_bytes(value.strip()), expected):
            return True
    api_key = request.headers.get("X-API-Key")
    return bool(api_key) and _same_secret(_header_bytes(api_key.strip()), expected)


def _basic_credentials_ok(expected: str) -> bool:
    """HTTP Basic with any user name and the token as password."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (ValueError, TypeError):
        return False
    _, colon, password = decoded.partition(b":")
    return bool(colon) and _same_secret(password, expected)


def _json_error(status: int, error: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": error})
    response.status_code = status
    response.headers.update(COMMON_HEADERS)
    response.headers.update(headers or {})
    return response


def _unauthorized_api() -> Response:
    logger.info("SECURITY: rejected %s without a valid status token", request.path)
    return _json_error(401, "unauthorized", {"WWW-Authenticate": f'Bearer realm="{REALM}"'})


def _guarded(view: Callable[..., Response]) -> Callable[..., Response]:
    """Errors in these routes answer JSON 500 without internals (the traceback is logged, scrubbed)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except Exception:
            logger.error("STATUS: %s failed", request.path, exc_info=True)
            return _json_error(500, "internal_error")

    return wrapper


def _runtime():
    return current_app.extensions["render_signal"]


# --- /api/status ------------------------------------------------------------------------------------------------------

@_guarded
def api_status() -> Response:
    runtime = _runtime()
    token = runtime.settings.status_api_token
    if not token:
        return _json_error(404, "not_found")
    if not _api_credentials_ok(token):
        return _unauthorized_api()
    document, _ = build_status(runtime)
    response = jsonify(document)
    response.headers.update(COMMON_HEADERS)
    return response


# --- /metrics ---------------------------------------------------------------------------------------------------------

class StatusCollector:
    """A prometheus_client collector over one status document (built per request)."""

    def __init__(self, document: dict) -> None:
        self.document = document

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        doc = self.document
        counters = doc.get("counters")
        if counters is not None:
            for name in _counter_names(counters):
                value = counters.get(name)
                metric = f"{METRIC_PREFIX}{name}"
                help_text = f"{name.replace('_', ' ').capitalize()} since the first start (cluster-wide)."
                if isinstance(value, dict) or name in LABELLED_COUNTERS:
                    family = CounterMetricFamily(metric, help_text, labels=["reason"])
                    for reason, count in sorted((value or {}).items()):
                        family.add_metric([reason], float(count))
                else:
                    family = CounterMetricFamily(metric, help_text, value=float(value or 0))
                yield family

        def gauge(name: str, help_text: str, value: float | None) -> Iterator[Any]:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return
            yield GaugeMetricFamily(f"{METRIC_PREFIX}{name}", help_text, value=float(value))

        yield from gauge("up", "1: this process answered (see status_stale for the shared store).", 1)
        yield from gauge("status_stale", "1 when the shared state store could not be read for this answer.",
                         1 if doc.get("stale") else 0)
        outbox = doc.get("outbox")
        if outbox is not None:
            yield from gauge("outbox_pending", "Webhooks waiting for delivery.", outbox.get("pending"))
            yield from gauge("outbox_oldest_pending_age_seconds", "Age of the oldest pending webhook (0 if none).",
                             outbox.get("oldest_pending_age_s") or 0.0)
            # Not "dead_letters": that family is the counter render_signal_dead_letters_total.
            yield from gauge("outbox_dead_letters", "Dead letters currently kept (within STATE_RETENTION_DAYS).",
                             (outbox.get("dead_letters") or {}).get("count"))
        yield from gauge("last_success_age_seconds", "Seconds since the lease holder's last successful IMAP cycle.",
                         doc.get("last_success_age_s"))
        lease = doc.get("lease") or {}
        if not doc.get("stale") and doc.get("background") == "enabled":
            yield from gauge("lease_held", "1 when a lease holder published its status within TTL + retry.",
                             1 if doc.get("lease_held") else 0)
        yield from gauge("lease_renewals", "Renewals by the current lease holder.", lease.get("renewals"))
        yield from gauge("lease_losses", "Leases lost by the current lease holder process.", lease.get("losses"))
        poller = doc.get("poller") or {}
        yield from gauge("poller_consecutive_errors", "Consecutive failed poller cycles.",
                         poller.get("consecutive_errors"))
        state = poller.get("state")
        if state:
            family = GaugeMetricFamily(f"{METRIC_PREFIX}poller_state", "1 for the poller's current state.",
                                       labels=["state"])
            family.add_metric([str(state)], 1.0)
            yield family
        info = GaugeMetricFamily(f"{METRIC_PREFIX}build_info", "Version of the answering instance.",
                                 labels=["version"])
        info.add_metric([str((doc.get("instance") or {}).get("version") or "")], 1.0)
        yield info


def _counter_names(counters: dict) -> list[str]:
    extra = sorted(name for name in counters if name not in KNOWN_COUNTERS and _valid_metric_part(name))
    return [name for name in KNOWN_COUNTERS if name in counters] + extra


def _valid_metric_part(name: str) -> bool:
    return bool(name) and all(ch.isalnum() and ch.isascii() or ch == "_" for ch in name) and not name[0].isdigit()


def render_metrics(document: dict, accept: str | None = None) -> tuple[bytes, str]:
    """``(body, content type)``: the classic text format, or OpenMetrics when the scraper asks for it."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(document))  # type: ignore[arg-type]
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


@_guarded
def metrics() -> Response:
    runtime = _runtime()
    token = runtime.settings.status_api_token
    if token and not _api_credentials_ok(token):
        return _unauthorized_api()
    document, _ = build_status(runtime)
    body, content_type = render_metrics(document, request.headers.get("Accept"))
    response = Response(body, content_type=content_type)
    response.headers.update(COMMON_HEADERS)
    return response


# --- / (the human page) -------------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem;color:#1d2430;background:#f6f7f9}
h1{font-size:1.3rem;margin:0 0 .2rem}h2{font-size:1rem;margin:1.4rem 0 .4rem}
.muted{color:#667}.badge{display:inline-block;padding:.1rem .5rem;border-radius:.6rem;font-weight:600}
.ok{background:#d9f2e1;color:#145c2c}.degraded{background:#fff0c2;color:#6b4d00}.down{background:#fbd5d5;color:#7a1111}
.stale{background:#e3e6ea;color:#333}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0001}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e6e8eb;vertical-align:top}
th{background:#eef0f3;font-weight:600}dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:0}
dt{color:#556}dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
.cards{margin-top:1rem;display:grid;grid-template-columns:repeat(auto-fit,minmax(18rem,1fr));gap:1rem}
.card{background:#fff;padding:.8rem 1rem;box-shadow:0 1px 2px #0001}
""".strip()
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode("utf-8")).digest()).decode("ascii")
# Nothing may load from anywhere: no script, no image, no font, no frame, no form target; only the inline style.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'none'; "
                           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>render-signal status</title><style>{{ style }}</style></head>
<body>
<h1>render-signal <span class="badge {{ health.status }}">{{ health.status }}</span>
{% if doc and doc.stale %}<span class="badge stale">stale: shared store unreadable</span>{% endif %}</h1>
<p class="muted">version {{ version }} · generated {{ generated_at }}</p>
<h2>Health <span class="muted">(as /health answers from this instance)</span></h2>
<table><tr>{% for name in health.checks %}<th>{{ name }}</th>{% endfor %}</tr>
<tr>{% for name, value in health.checks.items() %}<td>{{ value }}</td>{% endfor %}</tr></table>
{% if doc %}
<div class="cards">
<section class="card"><h2>Lease</h2><dl>
<dt>holder</dt><dd id="lease-holder">{{ doc.lease.holder or "nobody" }}</dd>
<dt>backend</dt><dd>{{ doc.lease.backend }}</dd>
<dt>acquired</dt><dd>{{ doc.lease.acquired_at or "-" }}</dd>
<dt>renewals / losses</dt><dd>{{ doc.lease.renewals if doc.lease.renewals is not none else "-" }} /
{{ doc.lease.losses if doc.lease.losses is not none else "-" }}</dd></dl></section>
<section class="card"><h2>Poller</h2><dl>
<dt>state</dt><dd id="poller-state">{{ doc.poller.state }}</dd>
<dt>mailbox</dt><dd>{{ doc.poller.mailbox or "-" }}</dd>
<dt>last successful cycle</dt><dd id="last-success">{{ doc.poller.last_success_at or "never" }}</dd>
<dt>last cycle</dt><dd>{{ doc.poller.last_cycle_at or "-" }}</dd>
<dt>consecutive errors</dt><dd>{{ doc.poller.consecutive_errors }}</dd>
{% if doc.poller.last_error %}<dt>last error</dt>
<dd>{{ doc.poller.last_error.at or "" }} {{ doc.poller.last_error.message }}</dd>{% endif %}
</dl></section>
<section class="card"><h2>Outbox</h2>{% if doc.outbox %}<dl>
<dt>pending</dt><dd id="outbox-pending">{{ doc.outbox.pending }}</dd>
<dt>oldest pending</dt><dd>{{ doc.outbox.oldest_pending_age_s if doc.outbox.oldest_pending_age_s is not none
else "-" }}{% if doc.outbox.oldest_pending_age_s is not none %} s{% endif %}</dd>
<dt>dead letters</dt><dd id="dead-letters">{{ doc.outbox.dead_letters.count }}</dd>
{% for item in doc.outbox.dead_letters.recent %}<dt>{{ item.at }}</dt><dd>{{ item.event_id }}: {{ item.reason }}</dd>
{% endfor %}</dl>{% else %}<p class="muted">unknown</p>{% endif %}</section>
</div>
<h2>Last {{ recent_limit }} processed emails</h2>
{% if recent %}<table id="recent"><tr><th>time</th><th>sender</th><th>subject</th><th>links</th><th>outcome</th></tr>
{% for entry in recent %}<tr><td>{{ entry.at }}</td><td>{{ entry.sender }}</td><td>{{ entry.subject }}</td>
<td>{{ entry.links | join(", ") }}</td><td>{{ entry.outcome }}</td></tr>
{% endfor %}</table>{% else %}<p class="muted" id="recent">none{% if doc.stale %} (store unreadable){% endif %}</p>{% endif %}
{% else %}
<p class="muted">Set STATUS_API_TOKEN to see the lease, the outbox and the recent emails here.</p>
{% endif %}
</body></html>
"""

_template = None


def _page_template():
    global _template
    if _template is None:
        from jinja2 import Environment

        # Autoescape on for every value: subjects and senders come from arbitrary emails.
        _template = Environment(autoescape=True).from_string(_PAGE)
    return _template


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    response.headers.update(COMMON_HEADERS)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers.update(headers or {})
    return response


@_guarded
def dashboard() -> Response:
    import time

    from routes.health import health_document
    from timestamps import iso_utc

    runtime = _runtime()
    token = runtime.settings.status_api_token
    if token and not _basic_credentials_ok(token):
        logger.info("SECURITY: rejected %s without valid credentials", request.path)
        return _html("<!doctype html><title>401</title><p>Credentials required.</p>", 401,
                     {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})
    if token:
        document, recent = build_status(runtime, recent_limit=RECENT_LIMIT)
        health = document["health"]
        generated_at = document["generated_at"]
    else:
        health_doc, _ = health_document(runtime)
        health = {"status": health_doc["status"], "checks": health_doc["checks"]}
        document, recent, generated_at = None, [], iso_utc(time.time())
    from markupsafe import Markup

    # The style is our constant: unescaped, or its quotes would become entities (broken CSS, wrong CSP hash).
    body = _page_template().render(style=Markup(_STYLE), doc=document, recent=recent, health=health,
                                   version=runtime.version, generated_at=generated_at, recent_limit=RECENT_LIMIT)
    return _html(body)


def register_operator_routes(app: Flask, runtime) -> None:
    """Attach ``/api/status``, ``/metrics`` and ``/`` (the runtime is read from ``app.extensions`` per request)."""
    app.add_url_rule("/api/status", "operator_status", api_status, methods=["GET"])
    app.add_url_rule("/metrics", "operator_metrics", metrics, methods=["GET"])
    app.add_url_rule("/", "operator_dashboard", dashboard, methods=["GET"])
