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
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}
    response = app.test_client().get("/", headers=wrong)
    assert response.status_code == 401
    policy = response.headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'; style-src 'sha256-")
    assert TOKEN not in response.get_data(as_text=True)


def test_a_browser_without_credentials_is_sent_to_the_login_form(app):
    response = app.test_client().get("/")
    assert response.status_code == 303
    assert response.headers["Location"] == "/login?next=/"


def test_the_console_policy_runs_no_script_and_lets_forms_post_here_only(app):
    policy = app.test_client().get("/", headers=basic()).headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'" and "script-src" not in directives
    assert directives["form-action"] == "'self'" and directives["frame-ancestors"] == "'none'"


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


# --- the Mailboxes and Targets tables (issue 17) ----------------------------------------------------------------------

def rendered(app, mutate) -> lxml.html.HtmlElement:
    """The page for this app's own status document after ``mutate(document)`` (entries the way routes.status_view
    writes them, for states a SQLite-only app cannot reach: another holder, an open circuit)."""
    from routes.operator import render_page
    from routes.status_view import build_status

    with app.app_context():
        document, _ = build_status(app.extensions["render_signal"].status_source())
        mutate(document)
        html = render_page(document, [], health=document["health"], version="v", generated_at="now")
    return lxml.html.fromstring(html)


def cells(tree, table_id: str, first_cell: str) -> tuple[lxml.html.HtmlElement, dict[str, lxml.html.HtmlElement]]:
    rows = tree.get_element_by_id(table_id).findall(".//tr")
    headers = [cell.text_content().strip() for cell in rows[0].findall("th")]
    (row,) = [row for row in rows[1:] if row.findall("td")[0].text_content().strip() == first_cell]
    return row, dict(zip(headers, row.findall("td"), strict=True))


def with_targets(*circuits):
    def mutate(document):
        base = document["targets"][0]
        document["targets"] = [{**base, "id": f"t{index}", "circuit": circuit}
                               for index, circuit in enumerate(circuits)]
    return mutate


def test_an_open_circuit_is_marked_open_by_text_and_class(app):
    tree = rendered(app, with_targets("open", "closed"))
    row, cell = cells(tree, "targets", "t0")
    # the word, in a flag, on a marked row: not colour alone
    assert cell["circuit"].text_content().strip() == "open"
    (flag,) = cell["circuit"].xpath(".//span")
    assert {"flag", "bad"} <= set(flag.classes) and flag.text_content() == "open"
    assert {"marked", "bad"} <= set(row.classes)
    # a closed circuit is plain text on an unmarked row
    row, cell = cells(tree, "targets", "t1")
    assert cell["circuit"].text_content().strip() == "closed"
    assert cell["circuit"].xpath(".//span") == [] and "marked" not in row.classes


def test_a_half_open_circuit_is_marked_as_a_warning(app):
    row, cell = cells(rendered(app, with_targets("half_open")), "targets", "t0")
    assert cell["circuit"].text_content().strip() == "half-open"
    assert {"marked", "warn"} <= set(row.classes)


def test_a_target_without_a_circuit_field_shows_a_dash(app):
    def drop_circuit(document):
        document["targets"][0].pop("circuit", None)

    _, cell = cells(rendered(app, drop_circuit), "targets", "default")
    assert cell["circuit"].text_content().strip() == "\u2014"


def test_a_mailbox_nobody_holds_is_marked_no_holder_by_text_and_class(app):
    def add_agency(document):
        document["mailboxes"].append({
            "id": "agency", "folder": None, "state": "no_holder", "imap": None,
            "lease": {"held": False, "holder": None, "state": None, "expires_in_s": None},
            "checkpoint": {"uidvalidity": None, "last_uid": None}, "idle": None, "last_success_at": None,
            "backlog": 0})

    tree = rendered(app, add_agency)
    row, cell = cells(tree, "mailboxes", "agency")
    assert cell["state"].text_content().strip() == "no holder" and cell["holder"].text_content() == "none"
    assert {"flag", "warn"} <= set(cell["state"].xpath(".//span")[0].classes)
    assert {"marked", "warn"} <= set(row.classes)
    assert "marked" not in cells(tree, "mailboxes", "default")[0].classes


def test_values_in_the_tables_are_html_escaped(app):
    # a folder name comes from the configuration, a holder from the shared store: neither is markup
    def hostile(document):
        entry = document["mailboxes"][0]
        entry["folder"] = "<b>INBOX</b>"
        entry["lease"] = {**entry["lease"], "held": True, "holder": '"><script>alert(1)</script>'}

    tree = rendered(app, hostile)
    _, cell = cells(tree, "mailboxes", "default")
    assert tree.xpath("//script | //b") == []
    assert cell["folder"].text_content() == "<b>INBOX</b>"
    assert cell["holder"].text_content() == 'held by "><script>alert(1)</script>'


def test_the_page_without_a_token_has_no_mailbox_or_target_table(tmp_path):
    from app import create_app

    env = {"IMAP_SERVER": "127.0.0.1", "IMAP_PORT": "1", "EMAIL_ADDRESS": "inbox@render-signal.test",
           "EMAIL_PASSWORD": "imap-pw-Qm27-secret", "WEBHOOK_URL": "http://127.0.0.1:9/hook",
           "WEBHOOK_ALLOW_INSECURE": "true", "STATE_DIR": str(tmp_path / "var")}
    flask_app = create_app(Settings.from_env(env))
    try:
        response = flask_app.test_client().get("/")
        tree = lxml.html.fromstring(response.get_data(as_text=True))
        assert response.status_code == 200
        assert tree.xpath("//*[@id='mailboxes'] | //*[@id='targets']") == []
    finally:
        flask_app.extensions["render_signal"].stop_background(timeout=1)
