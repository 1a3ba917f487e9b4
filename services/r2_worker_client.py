"""The Cloudflare Worker that copies a source URL into R2: one ``requests`` session, one verb (``copy``).

This module owns the HTTP exchange with the Worker: the request body and token header, redirects never followed,
the certificate always checked, the answer capped at ``MAX_RESPONSE_BYTES`` and read as JSON. Every failure comes
out as ``R2WorkerError`` with a snake_case ``reason`` (the ``reason=`` of the R2_TRANSFER fallback log) and a
``detail`` that never carries the Worker URL or the source URL; ``requests`` exceptions do not leak out. What to try,
how long to wait and what a failure means for the circuit are the caller's business (services/r2_offload.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter

if TYPE_CHECKING:
    from config import R2Config

# The Worker answers a small JSON document; anything longer is not that.
MAX_RESPONSE_BYTES = 64 * 1024
# The reasons of the Worker's 403 policy refusals (worker/README.md); the error's reason is ``policy_<reason>``,
# ``policy_refused`` for any other word (the label set stays bounded whatever the Worker answers).
POLICY_REASONS = frozenset({"scheme", "userinfo", "port", "host", "too_large", "key_conflict"})


class R2WorkerError(Exception):
    """One Worker call did not report a copy; ``reason`` is the snake_case log reason."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason if not detail else f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class WorkerCopy:
    """The copy the Worker reports. ``r2_url`` is None when its answer carries no http(s) URL (a private bucket
    has none: the object key is presigned instead)."""

    r2_url: str | None
    object_key: str
    original_filename: str | None


class R2WorkerClient:
    """POSTs copy requests to the Worker over one pooled session (no retries: the caller decides)."""

    def __init__(self, *, endpoint: str, token: str | None, verify: bool | str, pool_maxsize: int,
                 session: requests.Session | None = None) -> None:
        self._endpoint = endpoint
        self._token = token
        self._verify = verify
        self._session = session if session is not None else _new_session(pool_maxsize)

    @classmethod
    def from_config(cls, r2: R2Config, *, pool_maxsize: int,
                    session: requests.Session | None = None) -> "R2WorkerClient":
        assert r2.fetch_endpoint, "Settings.validate requires R2_FETCH_ENDPOINT with R2_FETCH_ENABLED"
        # Certificate and host name always checked: against R2_CA_FILE when set, else the bundled store.
        return cls(endpoint=r2.fetch_endpoint, token=r2.fetch_token, verify=r2.ca_file or True,
                   pool_maxsize=pool_maxsize, session=session)

    def close(self) -> None:
        self._session.close()

    def copy(self, *, source_url: str, object_key: str, bucket: str | None, provider: str, email_id: str,
             timeout: float, source_key: str | None = None, max_bytes: int | None = None) -> WorkerCopy:
        """Ask the Worker to copy ``source_url`` to ``object_key``; the copy it reports, or ``R2WorkerError``
        (``policy_<reason>`` for a 403 policy refusal, ``worker_refused`` when it answers ``success`` other than
        true). ``source_key`` is the link's key form (the Worker keys its objects by it), ``max_bytes`` the largest
        copy wanted (it can only lower the Worker's own R2_MAX_BYTES)."""
        body: dict[str, Any] = {"source_url": source_url, "object_key": object_key, "bucket": bucket,
                                "provider": provider, "email_id": email_id}
        if source_key is not None:
            body["source_key"] = source_key
        if max_bytes is not None:
            body["max_bytes"] = int(max_bytes)
        document = self._post(body, timeout)
        if document.get("success") is not True:
            raise R2WorkerError("worker_refused", _short_detail(document.get("error")))
        return _copy_of(document, object_key)

    def _post(self, body: dict, timeout: float) -> dict:
        """POST one copy request; the Worker's JSON answer, or ``R2WorkerError`` naming what went wrong."""
        headers = {"X-R2-FETCH-TOKEN": self._token or "", "Content-Type": "application/json",
                   "Accept": "application/json"}
        try:
            response = self._session.post(self._endpoint, data=json.dumps(body), headers=headers, timeout=timeout,
                                          allow_redirects=False, verify=self._verify, stream=True)
        except requests.Timeout:
            raise R2WorkerError("timeout") from None
        except requests.ConnectionError as exc:
            # str(exc) names the Worker URL (path and query included): only the type is kept.
            raise R2WorkerError("connection_error", type(exc).__name__) from None
        except requests.RequestException as exc:
            raise R2WorkerError("unexpected_error", type(exc).__name__) from None
        try:
            if response.status_code == 403:
                raise _policy_refusal(_read_capped(response, MAX_RESPONSE_BYTES))
            if response.status_code != 200:
                raise R2WorkerError(f"http_{response.status_code}")
            raw = _read_capped(response, MAX_RESPONSE_BYTES)
        except requests.Timeout:
            raise R2WorkerError("timeout") from None
        except requests.RequestException as exc:
            raise R2WorkerError("connection_error", type(exc).__name__) from None
        finally:
            response.close()
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise R2WorkerError("invalid_json") from None
        if not isinstance(document, dict):
            raise R2WorkerError("invalid_json")
        return document


def _policy_refusal(raw: bytes) -> R2WorkerError:
    """The error for a 403 answer: ``policy_<reason>`` when it is the Worker's policy document, ``http_403``
    otherwise (a proxy in front of the Worker, say)."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return R2WorkerError("http_403")
    if not isinstance(document, dict) or document.get("error") != "policy":
        return R2WorkerError("http_403")
    reason = document.get("reason")
    if isinstance(reason, str) and reason in POLICY_REASONS:
        return R2WorkerError(f"policy_{reason}", _short_detail(document.get("detail")))
    return R2WorkerError("policy_refused", _short_detail(document.get("detail")))


def _new_session(pool_maxsize: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _copy_of(document: dict, object_key: str) -> WorkerCopy:
    """The copy a ``success: true`` answer reports; the requested key and no file name where it names none."""
    r2_url = document.get("r2_url")
    answered_key = document.get("object_key")
    name = document.get("original_filename")
    return WorkerCopy(r2_url=r2_url if isinstance(r2_url, str) and r2_url.startswith(("https://", "http://"))
                      else None,
                      object_key=answered_key if isinstance(answered_key, str) and answered_key else object_key,
                      original_filename=name if isinstance(name, str) and name else None)


def _read_capped(response: requests.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=8192):
        size += len(chunk)
        if size > limit:
            raise R2WorkerError("invalid_json", "answer too long")
        chunks.append(chunk)
    return b"".join(chunks)


_DETAIL = re.compile(r"^[A-Za-z0-9 _.,:()/-]{1,100}$")


def _short_detail(value: Any) -> str | None:
    """The Worker's error text when it is a short plain phrase (it could otherwise echo the source URL)."""
    if isinstance(value, str) and _DETAIL.match(value) and "://" not in value:
        return value
    return None
