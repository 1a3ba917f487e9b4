"""docs/config.schema.json describes the file the loader reads: the README's example and the fixtures are valid by
both, the schema names exactly the loader's keys and choices, and documents both refuse are refused by both."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

import config_file
from config import WEEKDAYS, TargetProfile, TlsMode
from config_file import load_config_file, parse_config_text, provider_names
from settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "config.schema.json").read_text(encoding="utf-8"))
FIXTURES = sorted((ROOT / "tests" / "config_files").glob("*.yaml"))


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Configuration file\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match, "the README's Configuration file section has a yaml example"
    return match.group(1)


DOCUMENTS = [pytest.param(readme_example(), id="README")] + [
    pytest.param(path.read_text(encoding="utf-8"), id=path.name) for path in FIXTURES]


def schema_errors(text: str) -> list[str]:
    return [error.message for error in jsonschema.Draft202012Validator(SCHEMA).iter_errors(yaml.safe_load(text))]


def test_the_schema_is_a_valid_draft_2020_12_schema():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_there_are_fixtures_to_check():
    assert {path.name for path in FIXTURES} >= {"minimal.yaml", "every_key.yaml"}


@pytest.mark.parametrize("text", DOCUMENTS)
def test_the_example_and_every_fixture_are_valid_by_the_schema_and_the_loader(text, tmp_path):
    assert schema_errors(text) == []
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    config, _ = load_config_file(str(path), {}, Settings(), allow_missing_env=True)
    assert config.mailboxes and config.targets and config.routes


def test_the_readme_example_has_two_mailboxes_three_targets_fan_out_drop_and_continue(tmp_path):
    result = parse_config_text(readme_example(), {}, Settings(), allow_missing_env=True)
    assert result.config is not None
    config = result.config
    assert (len(config.mailboxes), len(config.targets)) == (2, 3)
    assert {target.profile for target in config.targets} >= {TargetProfile.MAKE, TargetProfile.N8N}
    assert any(target.window for target in config.targets) and any(target.headers for target in config.targets)
    assert any(route.drop for route in config.routes) and any(route.continue_ for route in config.routes)
    assert any(len(route.to) > 1 for route in config.routes)


def props(*path: str) -> set[str]:
    node = SCHEMA
    for key in path:
        node = node[key]
    return set(node["properties"])


@pytest.mark.parametrize("schema_path, loader_keys", [
    pytest.param((), config_file.TOP_KEYS, id="top"),
    pytest.param(("$defs", "mailbox"), config_file.MAILBOX_KEYS, id="mailbox"),
    pytest.param(("$defs", "mailbox", "properties", "sender_auth"), config_file.SENDER_AUTH_KEYS, id="sender_auth"),
    pytest.param(("$defs", "target"), config_file.TARGET_KEYS, id="target"),
    pytest.param(("$defs", "target", "properties", "basic_auth"), config_file.BASIC_AUTH_KEYS, id="basic_auth"),
    pytest.param(("$defs", "target", "properties", "retry"), config_file.RETRY_KEYS, id="retry"),
    pytest.param(("$defs", "target", "properties", "window"), config_file.WINDOW_KEYS, id="window"),
    pytest.param(("$defs", "route"), config_file.ROUTE_KEYS, id="route"),
    pytest.param(("$defs", "route", "properties", "match"), config_file.MATCH_KEYS, id="match"),
])
def test_the_schema_names_exactly_the_keys_the_loader_accepts(schema_path, loader_keys):
    assert props(*schema_path) == set(loader_keys)


def test_the_schema_offers_exactly_the_loaders_choices():
    mailbox, target, route = (SCHEMA["$defs"][name]["properties"] for name in ("mailbox", "target", "route"))
    assert mailbox["tls"]["enum"] == [mode.value for mode in TlsMode]
    assert target["profile"]["enum"] == [profile.value for profile in TargetProfile]
    assert target["window"]["properties"]["days"]["items"]["enum"] == list(WEEKDAYS)
    assert route["match"]["properties"]["provider"]["items"]["enum"] == list(provider_names())


MINIMAL = (ROOT / "tests" / "config_files" / "minimal.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("text", [
    pytest.param(MINIMAL.replace("    user: inbox", "    usr: x\n    user: inbox"), id="unknown-key"),
    pytest.param(MINIMAL.replace("id: default\n    server", "id: 2\n    server"), id="unquoted-id"),
    pytest.param(MINIMAL.replace("    user: inbox@example.com\n", ""), id="missing-user"),
    pytest.param(MINIMAL + "    window: {timezone: UTC, from: 19:00}\n", id="sexagesimal-time"),
    pytest.param(MINIMAL + "    headers: {Content-Type: x}\n", id="reserved-header"),
    pytest.param(MINIMAL + "    headers: {webhook-id: x}\n", id="webhook-header"),
    pytest.param(MINIMAL + "routes:\n  - to: [drop]\n", id="drop-in-a-list"),
    pytest.param(MINIMAL + "routes:\n  - match: {provider: [icloud]}\n    to: drop\n", id="unknown-provider"),
    pytest.param(MINIMAL.replace("id: default\n    url", "id: Bad\n    url"), id="bad-id"),
    pytest.param(MINIMAL.replace("id: default\n    url", "id: ops\n    url"), id="reserved-ops-target"),
    pytest.param(MINIMAL + "    concurrency: 0\n", id="concurrency-0"),
])
def test_a_document_the_loader_refuses_is_refused_by_the_schema_too(text):
    assert parse_config_text(text, {}, Settings(), allow_missing_env=True).errors
    assert schema_errors(text)
