"""The webhook contract as code: ``validate_webhook_body`` checks one body against docs/webhook-payload.schema.json.

Tests call it on every body a receiver gets, so a change of the payload builder that receivers would notice fails
a test instead of a Make scenario. The schema is read and checked (``Draft202012Validator.check_schema``) once per
process. Its references are resolved only inside the file: the registry refuses to retrieve any other URI, so a
stray ``$ref`` to a URL is an error, never a network fetch.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "webhook-payload.schema.json"


class WebhookContractError(ValueError):
    """A webhook body the contract refuses; ``path`` is a JSON Pointer to the failing value ("" = the body)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"webhook body breaks the contract at {path or '/'}: {reason}")
        self.path = path
        self.reason = reason


def _refuse_retrieval(uri: str) -> Resource:
    # Validation is offline and deterministic: a reference outside the schema file is a schema bug, not a download.
    raise LookupError(f"refusing to retrieve {uri}: the webhook schema resolves references only inside itself")


@functools.lru_cache(maxsize=1)
def _loaded() -> tuple[dict[str, Any], Draft202012Validator]:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    resource = Resource.from_contents(schema, default_specification=DRAFT202012)
    # referencing builds Registry with its own attrs wrapper, whose fields mypy cannot see
    registry: Registry = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]
    registry = registry.with_resource(schema["$id"], resource)
    return schema, Draft202012Validator(schema, registry=registry)


def load_schema() -> dict[str, Any]:
    """The v1 schema (a copy: callers cannot change what later validations use)."""
    return copy.deepcopy(_loaded()[0])


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two equal keys; receivers differ on which one they read.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _as_wire_json(body: bytes | bytearray | str | dict) -> Any:
    """The body as a receiver decodes it: bytes must be UTF-8 JSON; a dict is validated as it would be serialised."""
    if isinstance(body, dict):
        try:
            body = json.dumps(body, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise WebhookContractError("", f"not serialisable as JSON ({exc})") from None
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WebhookContractError("", f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not isinstance(body, str):
        raise WebhookContractError("", f"expected bytes, str or dict, got {type(body).__name__}")
    try:
        return json.loads(body, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise WebhookContractError("", f"not valid JSON ({exc})") from None


def _pointer(parts: Any) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def validate_webhook_body(body: bytes | bytearray | str | dict) -> None:
    """Raise ``WebhookContractError`` (with the failing path) unless ``body`` is a valid v1 email webhook body."""
    instance = _as_wire_json(body)
    validator = _loaded()[1]
    error = best_match(validator.iter_errors(instance))
    if error is not None:
        raise WebhookContractError(_pointer(error.absolute_path), error.message)
