"""A webhook body that fits a target's cap (``TargetConfig.body_cap``): ``fit_body(payload, cap)``.

Pure. The size is that of the bytes the sender puts on the wire, serialised by the delivery loop's own function
(``background.delivery.payload_bytes``: UTF-8 JSON, ``ensure_ascii=False``, compact separators), so what fits here
is exactly what is sent. A body within the cap is returned unchanged. A larger one is shrunk, in the order of issue
17 ("Delivery per target"), only as far as needed:

1. ``email_content`` is cut at a character (code point: bodies carry no lone surrogates) so that the body fits,
   keeping as much text as fits; ``email_content_truncated`` becomes true and ``bodyPreview`` is derived again
   from the cut text (the schema's "first 200 characters of email_content" stays true);
2. only when even an empty ``email_content`` does not fit: the per-file details of the delivery links are dropped,
   then step 1 is tried again on that body (so the content keeps as much as fits beside the links without their
   details). The details are ``DETAIL_KEYS``: ``original_filename``, set to null (the schema requires every key of
   a link entry, and null is its value for "no name"), and a resolved link's ``files`` list, emptied (its
   ``file_count`` and ``size_bytes`` stay). ``provider``, ``raw_url``, ``direct_url`` and ``r2_url`` stay: they
   are the link itself, the one thing the receiver cannot do without. Links are never removed;
3. still too large (many long links, or long headers: subject, From, Message-ID are never cut here): no body, reason
   ``body_too_large`` (the item is dead-lettered); nothing over the cap is ever returned.

The cut is found by a binary search over the content's length. Each probe serialises only the content and its
preview (the rest of the body is measured once: a JSON object's size is the sum of its members'), so a fit costs
O(n log n) in the content's length, never a serialisation of the whole body per probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from email_processing.payload import body_preview, payload_bytes

BODY_TOO_LARGE = "body_too_large"
# per-file details of a delivery link, dropped in step 2: the value each takes then
DETAIL_VALUES: dict[str, Any] = {"original_filename": None, "files": []}
DETAIL_KEYS = tuple(DETAIL_VALUES)


@dataclass(frozen=True)
class FitResult:
    """The body to send (``body``, the bytes, and ``payload``, what they serialise) and whether it was ``shrunk``;
    or no body and ``reason`` ``body_too_large``."""

    body: bytes | None
    payload: dict[str, Any] | None
    shrunk: bool
    reason: str | None = None


def fit_body(payload: dict[str, Any], cap: int) -> FitResult:
    """``payload`` serialised within ``cap`` bytes: unchanged, shrunk (see the module docstring), or refused."""
    body = serialized(payload)
    if len(body) <= cap:
        return FitResult(body=body, payload=payload, shrunk=False)
    fitted = _fit_content(payload, cap)
    if fitted is None:
        stripped = without_link_details(payload)
        body = serialized(stripped)
        fitted = stripped if len(body) <= cap else _fit_content(stripped, cap)  # room for the whole text, maybe
    if fitted is not None:
        body = serialized(fitted)
        if len(body) <= cap:  # measured member by member, checked whole: never a body over the cap
            return FitResult(body=body, payload=fitted, shrunk=True)
    return FitResult(body=None, payload=None, shrunk=False, reason=BODY_TOO_LARGE)


def serialized(payload: Any) -> bytes:
    """The bytes the delivery loop sends for ``payload`` (``email_processing.payload.payload_bytes``)."""
    return payload_bytes(payload)


def without_link_details(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with every delivery link's ``DETAIL_KEYS`` dropped to ``DETAIL_VALUES`` (a new dict; ``payload``
    is unchanged)."""
    links = payload.get("delivery_links")
    if not isinstance(links, list):
        return payload
    stripped = [{**link, **{key: value for key, value in DETAIL_VALUES.items() if key in link}}
                if isinstance(link, dict) else link for link in links]
    return {**payload, "delivery_links": stripped}


def _fit_content(payload: dict[str, Any], cap: int) -> dict[str, Any] | None:
    """``payload`` (over ``cap``) within ``cap`` by cutting ``email_content`` as little as possible, or None when
    even an empty content does not fit (or there is no content to cut)."""
    content = payload.get("email_content")
    if not isinstance(content, str):
        return None
    emptied = {**payload, "email_content": "", "bodyPreview": "", "email_content_truncated": True}
    budget = cap - len(serialized(emptied))
    if budget < 0:
        return None
    empty_member = len(serialized({"": ""}))

    def member_bytes(text: str) -> int:  # what ``text`` and its preview add to the emptied body
        return len(serialized({"": text})) + len(serialized({"": body_preview(text)})) - 2 * empty_member

    # The longest cut whose content and preview take at most ``budget`` bytes (the empty one does); the size only
    # grows with the length, and each character takes at least one byte: no more than ``budget`` of them fit.
    low, high = 0, min(len(content), budget)
    while low < high:
        middle = (low + high + 1) // 2
        if member_bytes(content[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    cut = content[:low]
    return {**payload, "email_content": cut, "bodyPreview": body_preview(cut), "email_content_truncated": True}
