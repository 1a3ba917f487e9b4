"""The page's templates: the CSP's style hash is the hash of the bytes rendered inline, and follows the CSS file."""

from __future__ import annotations

import base64
import hashlib

import lxml.html
import pytest

from settings import Settings

TOKEN = "page-token-Zr41-do-not-print"


def style_hash(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


@pytest.fixture
def app(tmp_path):
    # No REDIS_URL: the SQLite store under tmp_path, so no socket is opened.
    from app import create_app

    env = {"IMAP_SERVER": "127.0.0.1", "IMAP_PORT": "1", "EMAIL_ADDRESS": "inbox@render-signal.test",
           "EMAIL_PASSWORD": "imap-pw-Qm27-secret", "WEBHOOK_URL": "http://127.0.0.1:9/hook",
           "WEBHOOK_ALLOW_INSECURE": "true", "STATUS_API_TOKEN": TOKEN, "STATE_DIR": str(tmp_path / "var")}
    flask_app = create_app(Settings.from_env(env))
    yield flask_app
    flask_app.extensions["render_signal"].stop_background(timeout=1)


def basic() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()}


def test_the_csp_allows_exactly_the_style_bytes_rendered_inline(app):
    from routes.operator import STYLE_PATH

    response = app.test_client().get("/", headers=basic())
    assert response.status_code == 200
    inline = lxml.html.fromstring(response.get_data(as_text=True)).xpath("//style")[0].text
    # The inline text is the CSS file, verbatim (no entity escaping), and the policy names its hash.
    assert inline == STYLE_PATH.read_text(encoding="utf-8").strip()
    assert f"style-src 'sha256-{style_hash(inline)}';" in response.headers["Content-Security-Policy"]


def test_the_401_page_carries_the_same_strict_policy(app):
    response = app.test_client().get("/")
    assert response.status_code == 401
    policy = response.headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'; style-src 'sha256-")
    assert TOKEN not in response.get_data(as_text=True)


def test_a_change_to_the_css_file_changes_the_csp(tmp_path):
    from routes.operator import STYLE_PATH, inline_style

    original = STYLE_PATH.read_text(encoding="utf-8")
    edited = original.replace("#f6f7f9", "#f6f7fa")
    assert edited != original
    before, after = inline_style(original), inline_style(edited)
    assert before.content_security_policy != after.content_security_policy
    assert f"'sha256-{style_hash(edited.strip())}'" in after.content_security_policy


def test_every_operator_route_is_registered_through_a_blueprint(app):
    rules = {rule.rule: rule.endpoint for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert {"/", "/api/status", "/metrics", "/health"} <= rules.keys()
    assert all("." in endpoint for endpoint in rules.values()), rules
