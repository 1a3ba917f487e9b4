"""The webhook body and the email's identity.

Field names are an interface: Make scenarios and a PHP receiver read them (issue 6 §9), so ``build_payload`` keeps
the historic names (``microsoft_graph_email_id``, ``receivedDateTime``, ``bodyPreview`` ...) and only adds fields.
``email_content`` is the text/plain text followed by the text derived from the HTML, capped at
``CONTENT_CAP_BYTES`` of UTF-8; ``email_content_truncated`` is true when anything of the body was cut (here, or by
the parser's HTML/text caps). Every string of the body is free of lone surrogates (``replace_lone_surrogates``), so
the body always serialises as UTF-8 JSON whatever charset the email claimed. ``original_filename`` comes from outside
(the R2 Worker): every link entry passes ``safe_filename``, so no path, control or bidirectional character, and no
name longer than 255 bytes reaches a receiver.
"""

from __future__ import annotations

import codecs
import json
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Iterable

from email_processing.identity import email_id_for, event_id_for
from email_processing.links import LinkLike
from email_processing.parsing import ParsedEmail
from email_processing.resolution import link_fields
from timestamps import format_utc

CONTENT_CAP_BYTES = 1_048_576
PREVIEW_CHARS = 200
FILENAME_MAX_BYTES = 255  # of UTF-8: the longest file name common file systems take
_SURROGATE = re.compile("[\ud800-\udfff]")
# C0/C1 controls, line/paragraph separators, and the bidirectional controls (Bidi_Control: ALM, LRM/RLM, the
# embeddings and overrides, the isolates) that make "invoice<RLO>gpj.exe" display as "invoiceexe.jpg".
_UNSAFE_FILENAME_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_PATH_SEPARATOR = re.compile(r"[/\\]")
_EXTENSION_MAX_BYTES = 64  # a longer "extension" is not one: it is cut like the rest of the name


def format_received_at(moment: datetime) -> str:
    """``received_at``: ``YYYY-MM-DDTHH:MM:SSZ`` in UTC (a naive datetime is taken as UTC)."""
    return format_utc(moment)


def received_at_from_date_header(date_header: str | None, *, now: datetime | None = None) -> str:
    """received_at for a saved email (dry run): its Date header, or ``now`` when the header is missing or invalid."""
    if date_header:
        try:
            moment = parsedate_to_datetime(date_header)
        except (TypeError, ValueError, IndexError, OverflowError):
            moment = None
        if moment is not None:
            try:
                return format_received_at(moment)
            except (ValueError, OverflowError):
                pass
    return format_received_at(now or datetime.now(timezone.utc))


def email_content_for(parsed: ParsedEmail, html_text: str) -> tuple[str, bool]:
    """(email_content, truncated): text/plain, then the HTML's text, capped at CONTENT_CAP_BYTES of UTF-8."""
    pieces = [piece for piece in (parsed.text_plain.strip(), html_text.strip()) if piece]
    content = "\n\n".join(pieces)
    truncated = parsed.text_truncated or parsed.html_truncated
    if len(content) * 4 > CONTENT_CAP_BYTES:
        encoded = content.encode("utf-8", "surrogatepass")
        if len(encoded) > CONTENT_CAP_BYTES:
            decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
            content = decoder.decode(encoded[:CONTENT_CAP_BYTES], final=False)
            truncated = True
    return content, truncated


def replace_lone_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD and each surrogate pair joined into its character.

    UTF-7 and Python's escape codecs (a charset a sender may name) decode to surrogates, which UTF-8 cannot encode:
    left in, they would make the webhook body impossible to send.
    """
    if not _SURROGATE.search(text):
        return text
    # UTF-16 is the one codec where a pair means its character: a round trip joins pairs, replaces the rest.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return replace_lone_surrogates(value)
    if isinstance(value, dict):
        return {key: _cleaned(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cleaned(item) for item in value]
    return value


def body_preview(content: str) -> str:
    """The first PREVIEW_CHARS characters of ``content`` with whitespace runs collapsed to one space."""
    window = PREVIEW_CHARS * 4
    while True:
        preview = " ".join(content[:window].split())
        if len(preview) >= PREVIEW_CHARS or window >= len(content):
            return preview[:PREVIEW_CHARS]
        window *= 4


def safe_filename(name: str | None) -> str | None:
    """``original_filename`` as the webhook may carry it: no control or bidirectional character, only the part after
    the last ``/`` or ``\\`` (never ``.`` or ``..``), no surrounding whitespace, at most ``FILENAME_MAX_BYTES`` of
    UTF-8 cut at a character boundary with the extension kept; None when nothing is left.

    The name comes from outside (the Worker's answer, the source's Content-Disposition) and receivers save files
    under it: a path or an override character must not get through.
    """
    if not name:
        return None
    name = _UNSAFE_FILENAME_CHARACTER.sub("", replace_lone_surrogates(name))
    name = _PATH_SEPARATOR.split(name)[-1].strip()
    if name in ("", ".", ".."):
        return None
    if len(name.encode("utf-8")) <= FILENAME_MAX_BYTES:
        return name
    dot = name.rfind(".")
    extension = name[dot:] if 0 < dot < len(name) - 1 else ""
    if len(extension.encode("utf-8")) > _EXTENSION_MAX_BYTES:
        extension = ""
    stem = name[: len(name) - len(extension)]
    budget = FILENAME_MAX_BYTES - len(extension.encode("utf-8"))
    # Cutting valid UTF-8 can only leave an incomplete last character, which "ignore" drops.
    stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return (stem + extension).strip()


def _link_entry(link: Any) -> dict[str, Any]:
    resolved = link_fields(getattr(link, "resolution", None), getattr(link, "file_r2_urls", ()))
    for entry in resolved["files"]:
        entry["name"] = safe_filename(entry["name"]) or "file"
    return {
        "provider": link.provider,
        "raw_url": link.raw_url,
        "direct_url": link.direct_url,
        "r2_url": getattr(link, "r2_url", None),
        "original_filename": safe_filename(getattr(link, "original_filename", None)),
        **resolved,
    }


def build_payload(parsed: ParsedEmail, links: Iterable[LinkLike], received_at: str, *,
                  html_text: str | None = None, email_id: str | None = None,
                  delivery_links_truncated: bool = False) -> dict[str, Any]:
    """The webhook body for target ``default`` (``for_target`` gives another target's). ``html_text``: the HTML's
    text when the caller already has it (else derived here); ``email_id``: the email's id (else that of mailbox
    ``default``); ``delivery_links_truncated``: ``links`` are the first of more (the orchestrator's cap)."""
    if html_text is None:
        from email_processing.html_text import html_to_text_and_hrefs

        html_text = html_to_text_and_hrefs(parsed.html)[0] if parsed.html else ""
    content, truncated = email_content_for(parsed, html_text)
    content = replace_lone_surrogates(content)  # before the preview, so that it cannot split a joined pair
    if email_id is None:
        email_id = email_id_for(parsed)  # from the email as parsed: cleaning never changes an email's identity
    return _cleaned({
        "microsoft_graph_email_id": email_id,
        "subject": parsed.subject,
        "receivedDateTime": parsed.date_header,
        "sender_address": parsed.from_header,
        "sender_email": parsed.sender_email,
        "bodyPreview": body_preview(content),
        "email_content": content,
        "email_content_truncated": truncated,
        "delivery_links": [_link_entry(link) for link in links],
        "delivery_links_truncated": delivery_links_truncated,
        "message_id": parsed.message_id,
        "received_at": received_at,
        "event_id": event_id_for(email_id),
    })


def with_links(payload: dict[str, Any], links: Iterable[LinkLike]) -> dict[str, Any]:
    """``payload`` with its ``delivery_links`` replaced by ``links`` (same order: the R2 copies of the links it
    listed), every other field unchanged."""
    return _cleaned({**payload, "delivery_links": [_link_entry(link) for link in links]})


def for_target(payload: dict[str, Any], target_id: str) -> dict[str, Any]:
    """The body as sent to target ``target_id``: the same fields, the event id of that target."""
    return {**payload, "event_id": event_id_for(payload["microsoft_graph_email_id"], target_id)}


def payload_bytes(payload: dict) -> bytes:
    """The bytes a webhook body is sent as: compact JSON, UTF-8, non-ASCII kept (the delivery loop's one rule)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
