"""The webhook contract: docs/webhook-payload.schema.json describes exactly the body the service sends.

Every payload the pure path builds (each golden-corpus email, R2 copies, folders, no links, truncated HTML) is
validated as the bytes ``payload_bytes`` puts on the wire; the negative cases prove the schema can refuse; the
drift guard ties the schema's field lists to what ``build_payload`` emits and to the provider registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from email_processing.links import PROVIDERS, DeliveryLink
from email_processing.orchestrator import NullOffloader, OffloadedLink, process_email
from email_processing.parsing import parse_message
from email_processing.payload import build_payload, payload_bytes, received_at_from_date_header
from harness.contract import SCHEMA_PATH, WebhookContractError, load_schema, validate_webhook_body
from tests.unit.test_golden_corpus import CORPUS, MESSAGES

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLE_PATH = DOCS / "webhook-payload.v1.example.json"


class CopyingOffloader:
    """Plays a successful R2 offload: every Dropbox link gets a copy, as R2Offloader reports one."""

    def offload_links(self, email_id: str, links: list[DeliveryLink]) -> list[OffloadedLink]:
        return [
            OffloadedLink(link.provider, link.raw_url, link.direct_url,
                          r2_url=f"https://files.example.test/{link.provider}/{email_id[:8]}/{index}.bin",
                          original_filename=f"file-{index}.zip")
            if link.provider == "dropbox" else OffloadedLink(link.provider, link.raw_url, link.direct_url)
            for index, link in enumerate(links)
        ]


def payload_of(raw: bytes, *, offloader: Any = None, allow_without_links: bool = True) -> dict[str, Any]:
    parsed = parse_message(raw)
    result = process_email(parsed, received_at=received_at_from_date_header(parsed.date_header),
                           sender_allowlist=(), allow_without_links=allow_without_links,
                           offloader=offloader or NullOffloader())
    return result.payload


def example() -> dict[str, Any]:
    return json.loads(EXAMPLE_PATH.read_text("utf-8"))


def refusal(body: Any) -> WebhookContractError:
    with pytest.raises(WebhookContractError) as caught:
        validate_webhook_body(body)
    return caught.value


def object_schemas(node: Any, where: str = "") -> list[tuple[str, dict]]:
    """Every sub-schema that declares ``type: object`` (``if``/``then`` conditions are not object schemas)."""
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append((where, node))
        for key, value in node.items():
            found.extend(object_schemas(value, f"{where}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(object_schemas(value, f"{where}/{index}"))
    return found


# --- the schema itself -----------------------------------------------------------------------------------------

def test_the_schema_is_a_valid_draft_2020_12_schema_with_a_local_id():
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "urn:render-signal:webhook-payload:v1"  # a URN: nothing a validator could fetch
    assert "v1" in schema["title"]


# Fields added to v1 after bodies were already queued: the builder always emits them, but a body an earlier release
# stored (and this one delivers after an upgrade) lacks them, so the schema cannot require them.
ADDED_AFTER_RELEASE = {"": {"delivery_links_truncated"},
                       "/$defs/delivery_link": {"resolution", "expires_at", "size_bytes", "file_count", "files"},
                       "/$defs/delivery_link/properties/files/items": set()}
# Only in a sample webhook (POST /api/targets/<id>/sample, tests/unit/test_operator_actions.py): never built here.
SAMPLE_ONLY = {"test"}


def test_every_object_level_forbids_additional_properties_and_requires_every_field():
    levels = object_schemas(load_schema())
    assert [where for where, _ in levels] == ["", "/$defs/delivery_link", "/$defs/delivery_link/properties/files/items"]
    for where, level in levels:
        assert level["additionalProperties"] is False, where
        optional = ADDED_AFTER_RELEASE[where] | (SAMPLE_ONLY if where == "" else set())
        assert sorted(level["required"]) == sorted(set(level["properties"]) - optional), where


def test_every_field_has_a_description():
    schema = load_schema()
    for level in (schema, schema["$defs"]["delivery_link"]):
        for name, field in level["properties"].items():
            assert field.get("description", "").strip(), name


def test_the_schema_file_is_the_one_the_validator_reads():
    assert SCHEMA_PATH == DOCS / "webhook-payload.schema.json"
    assert load_schema() == json.loads(SCHEMA_PATH.read_text("utf-8"))


def test_load_schema_hands_out_a_copy():
    load_schema()["properties"].clear()
    validate_webhook_body(example())


# --- bodies the service builds are valid -----------------------------------------------------------------------

def test_the_example_validates_and_shows_one_r2_copy_and_one_source_only_link():
    body = EXAMPLE_PATH.read_bytes()
    validate_webhook_body(body)
    dropbox, wetransfer = example()["delivery_links"]
    assert dropbox["provider"] == "dropbox" and dropbox["r2_url"].startswith("https://")
    assert wetransfer["provider"] == "wetransfer" and wetransfer["r2_url"] is None


def test_the_example_is_what_the_builder_would_send():
    # Guards against a hand-edited example drifting from the builder: rebuild it from its own fields.
    body = example()
    email_content = body["email_content"]
    parsed = parse_message(
        f"From: {body['sender_address']}\r\nSubject: {body['subject']}\r\nDate: {body['receivedDateTime']}\r\n"
        f"Message-ID: <{body['message_id']}>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{email_content}"
        .encode("utf-8"))
    links = [OffloadedLink(**{key: link[key] for key in ("provider", "raw_url", "direct_url", "r2_url",
                                                         "original_filename")})
             for link in body["delivery_links"]]
    assert build_payload(parsed, links, body["received_at"]) == body


@pytest.mark.parametrize("path", MESSAGES, ids=lambda path: str(path.relative_to(CORPUS)))
def test_the_payload_of_every_corpus_email_validates_as_sent(path: Path):
    validate_webhook_body(payload_bytes(payload_of(path.read_bytes())))


def test_payloads_with_r2_copies_validate():
    raw = (CORPUS / "synthetic" / "dropbox_s_and_request.eml").read_bytes()
    payload = payload_of(raw, offloader=CopyingOffloader(), allow_without_links=False)
    assert payload["delivery_links"] and all(link["r2_url"] for link in payload["delivery_links"])
    validate_webhook_body(payload_bytes(payload))


def test_a_dropbox_folder_link_with_its_zip_copy_validates():
    raw = (CORPUS / "synthetic" / "dropbox_scl_fo_folder.eml").read_bytes()
    payload = payload_of(raw, offloader=CopyingOffloader(), allow_without_links=False)
    assert all("/scl/fo/" in link["raw_url"] for link in payload["delivery_links"])
    validate_webhook_body(payload_bytes(payload))
    validate_webhook_body(payload_bytes(payload_of(raw)))  # and without R2


def test_an_email_without_links_sent_by_allow_custom_webhook_without_links_validates():
    raw = (b"From: a@example.com\r\nSubject: hello\r\nContent-Type: text/plain\r\n\r\nNo link here.\r\n")
    parsed = parse_message(raw)
    result = process_email(parsed, received_at="2025-01-01T00:00:00Z", sender_allowlist=(),
                           allow_without_links=True, offloader=NullOffloader())
    assert result.decision == "send" and result.payload["delivery_links"] == []
    assert result.payload["message_id"] is None and result.payload["receivedDateTime"] is None
    validate_webhook_body(payload_bytes(result.payload))


def test_a_payload_of_truncated_html_validates():
    html = "<html><body><p>" + "é" * 700_000 + "</p><a href='https://we.tl/t-AAAAAAAAAA'>x</a></body></html>"
    raw = (b"From: News <news@example.com>\r\nSubject: big\r\nMessage-ID: <big@example.com>\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode("utf-8"))
    payload = payload_of(raw)
    assert payload["email_content_truncated"] is True
    validate_webhook_body(payload_bytes(payload))


def test_a_payload_whose_links_were_capped_validates():
    links = "\r\n".join(f"https://we.tl/t-{index:010d}" for index in range(60))
    raw = (b"From: a@example.com\r\nSubject: many\r\nContent-Type: text/plain\r\n\r\n" + links.encode() + b"\r\n")
    payload = payload_of(raw)
    assert len(payload["delivery_links"]) == 50 and payload["delivery_links_truncated"] is True
    validate_webhook_body(payload_bytes(payload))


def test_an_empty_email_validates():
    # The parser's "never raises" fallback: every header empty or missing.
    validate_webhook_body(payload_bytes(payload_of(b"")))


# --- the schema refuses what the service never sends -----------------------------------------------------------

def test_an_extra_top_level_field_is_refused():
    body = example()
    body["schema_version"] = 1
    error = refusal(body)
    assert error.path == "" and "schema_version" in error.reason


def test_an_extra_field_in_a_link_entry_is_refused():
    body = example()
    body["delivery_links"][1]["bytes"] = 10
    error = refusal(body)
    assert error.path == "/delivery_links/1" and "bytes" in error.reason


def test_a_link_queued_before_its_resolution_fields_existed_is_still_valid():
    body = example()
    for link in body["delivery_links"]:
        for key in ADDED_AFTER_RELEASE["/$defs/delivery_link"]:
            del link[key]
    validate_webhook_body(body)


def test_a_body_queued_before_delivery_links_truncated_existed_is_still_valid():
    # An outbox item an earlier release queued is sent with its stored body after an upgrade
    body = example()
    del body["delivery_links_truncated"]
    validate_webhook_body(body)


@pytest.mark.parametrize("field", ["event_id", "received_at", "message_id", "delivery_links"])
def test_a_missing_required_field_is_refused(field: str):
    body = example()
    del body[field]
    assert field in refusal(body).reason


def test_a_missing_field_in_a_link_entry_is_refused():
    body = example()
    del body["delivery_links"][0]["r2_url"]
    error = refusal(body)
    assert error.path == "/delivery_links/0" and "r2_url" in error.reason


@pytest.mark.parametrize(("pointer", "value"), [
    ("/email_content_truncated", "false"),
    ("/delivery_links_truncated", "false"),
    ("/delivery_links_truncated", None),
    ("/subject", None),
    ("/delivery_links", {}),
    ("/delivery_links/0/r2_url", 42),
    ("/event_id", "evt_a30f95b23e68c05fceaa746b820a6e5d"),
    ("/received_at", "2025-06-03 08:00:07"),
    ("/microsoft_graph_email_id", "A30F95B23E68C05FCEAA746B820A6E5D"),
    ("/delivery_links/1/provider", "google_drive"),
    ("/delivery_links/1/raw_url", "ftp://we.tl/t-Zx81KdP2qa"),
    ("/delivery_links/1/original_filename", "stills.zip"),  # a file name without an R2 copy
    ("/delivery_links/0/original_filename", "../../ep04_master.mov"),  # file names are made safe (safe_filename)
    ("/delivery_links/0/original_filename", "ep04\\master.mov"),
    ("/delivery_links/0/original_filename", "ep04_master\u202evom.exe"),
    ("/delivery_links/0/original_filename", "ep04\x00.mov"),
    ("/delivery_links/0/original_filename", ".."),
    ("/delivery_links/0/original_filename", "e" * 252 + ".mov"),
])
def test_a_wrong_type_or_shape_is_refused_at_its_path(pointer: str, value: Any):
    body = example()
    *parents, last = pointer.strip("/").split("/")
    target: Any = body
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[last] = value
    assert refusal(body).path == pointer


def test_bodies_that_are_not_one_json_object_are_refused():
    assert refusal(b"\xff{}").path == ""
    assert "not valid JSON" in refusal("{").reason
    assert "duplicate key" in refusal('{"event_id": "a", "event_id": "b"}').reason
    assert "not serialisable" in refusal({"subject": float("nan")}).reason
    assert "object" in refusal("[]").reason


def test_a_dict_is_validated_as_it_is_serialised():
    body = example()
    body["delivery_links"] = tuple(body["delivery_links"])  # a tuple goes out as a JSON array
    validate_webhook_body(body)


# --- drift guard -----------------------------------------------------------------------------------------------

def test_every_key_the_builder_emits_is_in_the_schema_and_the_other_way_round():
    raw = (CORPUS / "synthetic" / "dropbox_scl_fi_notification.eml").read_bytes()
    payload = payload_of(raw, offloader=CopyingOffloader())
    schema = load_schema()
    link_schema = schema["$defs"]["delivery_link"]
    assert [key for key in payload if key not in ADDED_AFTER_RELEASE[""]] == schema["required"]
    assert set(payload) == set(schema["properties"]) - SAMPLE_ONLY  # the builder emits every field, the added too
    for link in payload["delivery_links"]:
        added = ADDED_AFTER_RELEASE["/$defs/delivery_link"]
        assert [key for key in link if key not in added] == link_schema["required"]
        assert set(link) == set(link_schema["properties"])


def test_the_provider_enum_is_the_link_registry():
    enum = load_schema()["$defs"]["delivery_link"]["properties"]["provider"]["enum"]
    assert sorted(enum) == sorted(provider.name for provider in PROVIDERS)


def test_the_validator_never_retrieves_a_reference_outside_the_schema(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path):
    # A schema whose link entries point at a URL: validation must fail on the reference, never download it.
    import urllib.request

    from harness import contract

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the validator tried to fetch a URL")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    schema = load_schema()
    schema["properties"]["delivery_links"]["items"] = {"$ref": "https://schemas.example.test/link.json"}
    remote_ref_schema = tmp_path / "schema.json"
    remote_ref_schema.write_text(json.dumps(schema), "utf-8")
    monkeypatch.setattr(contract, "SCHEMA_PATH", remote_ref_schema)
    contract._loaded.cache_clear()
    try:
        with pytest.raises(Exception) as caught:
            validate_webhook_body(example())
    finally:
        contract._loaded.cache_clear()  # the next test reads the real schema again
    assert "schemas.example.test" in str(caught.value)
    assert not isinstance(caught.value, AssertionError)
