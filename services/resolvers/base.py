"""What every resolver shares (issue 19): the ``Resolver`` interface, its one exception, and ``ProviderHttp``, the
only way a resolver reaches a provider.

``ProviderHttp`` fetches nothing but https URLs on the provider's own hosts (its registry domains and download
hosts) or under its configured base URL (a setting whose default is the real one; tests point it at 127.0.0.1),
each checked by the same WHATWG reading receivers use (``email_processing.urls.check_url``); it never follows a
redirect by itself (``follow`` checks every hop), never sends cookies it was not given, bounds every call by the
provider's timeout and the caller's deadline, reads at most ``MAX_ANSWER_BYTES``, and logs provider and host only.
A 429 is ``ResolverError("rate_limited", retry_after=…)``; timeouts, connection errors and 5xx are
``ResolverError`` too (the resolution is then ``error`` or ``rate_limited``, and the link goes out as it is).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol
from urllib.parse import urljoin

import requests

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.resolution import Resolution
from email_processing.urls import RefusedUrl, check_url

logger = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 2 * 1024 * 1024   # an API answer or a page read while resolving
MAX_REDIRECTS = 5
USER_AGENT = "render-signal link resolver"


class ResolverError(Exception):
    """A provider could not be asked or answered nothing usable. ``reason``: ``rate_limited``, ``timeout``,
    ``connection_error``, ``http_<status>``, ``refused_host``, ``invalid_answer``…"""

    def __init__(self, reason: str, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.retry_after = retry_after


class Resolver(Protocol):
    """One provider's resolver, stateless: ``handles(link)`` says whether it knows the link's shape; ``resolve``
    asks the provider through ``http`` (built from ``config``, which also holds its API key and bounds):
    ``ResolverError`` for transport failures, a ``Resolution`` for every answer understood, bad news included."""

    provider: str

    def handles(self, link: DeliveryLink) -> bool: ...

    def resolve(self, link: DeliveryLink, http: "ProviderHttp", config: ProviderConfig) -> Resolution: ...


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ResolverError("invalid_answer", "not JSON") from None

    def location(self) -> str | None:
        target = self.headers.get("Location")
        return urljoin(self.url, target) if target else None


def _origin(url: str) -> str | None:
    """The WHATWG origin of ``url`` (the parser receivers use); None for a URL it cannot read."""
    from ada_url import URL

    try:
        parsed = URL(url)
    except ValueError:
        return None
    if parsed.username or parsed.password:
        return None
    return parsed.origin


def _href(url: str) -> str:
    from ada_url import URL

    return URL(url).href


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """RFC 9110 ``Retry-After``: seconds, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


class ProviderHttp:
    """HTTP for one provider's resolver. ``hosts``: the domains it may reach (the registry's, plus the configured
    base URL's host); ``deadline``: a monotonic time no call may pass (the email's and the provider's budget)."""

    def __init__(self, provider: str, hosts: Iterable[str], *, session: requests.Session, timeout: float,
                 deadline: float, base_url: str | None = None, clock: Any = time.monotonic) -> None:
        self.provider = provider
        self.hosts = tuple(hosts)
        self.base_origin = _origin(base_url) if base_url else None
        self.session = session
        self.timeout = timeout
        self.deadline = deadline
        self._clock = clock

    def checked(self, url: str) -> str:
        """``url`` in canonical form when it is https on one of this provider's hosts, or on the origin of its
        configured base URL (scheme, host and port as the operator set them); else ``refused_host``."""
        checked = check_url(url, self.hosts)
        if isinstance(checked, RefusedUrl) and self.base_origin is not None and _origin(url) == self.base_origin:
            return _href(url)
        if isinstance(checked, RefusedUrl):
            logger.warning("SECURITY: a resolver refused a URL outside the %s hosts host=%s reason=%s",
                           self.provider, checked.host, checked.reason)
            raise ResolverError("refused_host", checked.host or "")
        return checked.href

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                json_body: Any = None, params: Mapping[str, str] | None = None) -> Answer:
        """One call, no redirect followed; 429 and 5xx raise, other statuses are the caller's to read."""
        target = self.checked(url)
        left = self.deadline - self._clock()
        if left <= 0:
            raise ResolverError("timeout", "no time left in the budget")
        try:
            response = self.session.request(method, target, headers={"User-Agent": USER_AGENT, **(headers or {})},
                                            json=json_body, params=params, allow_redirects=False,
                                            timeout=min(self.timeout, left), stream=True)
        except requests.Timeout:
            raise ResolverError("timeout", f"{self.provider} did not answer in time") from None
        except requests.RequestException as exc:
            raise ResolverError("connection_error", type(exc).__name__) from None
        with response:
            body = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
        if len(body) > MAX_ANSWER_BYTES:
            raise ResolverError("invalid_answer", "answer too large")
        answer = Answer(response.status_code, dict(response.headers), body, target)
        if answer.status == 429:
            raise ResolverError("rate_limited", retry_after=retry_after_seconds(answer.headers.get("Retry-After")))
        if answer.status >= 500:
            raise ResolverError(f"http_{answer.status}")
        return answer

    def get(self, url: str, **kwargs: Any) -> Answer:
        return self.request("GET", url, **kwargs)

    def follow(self, url: str, *, method: str = "HEAD", max_redirects: int = MAX_REDIRECTS) -> Answer:
        """Follow redirects one hop at a time, each hop checked against the hosts; the first non-redirect answer."""
        answer = self.request(method, url)
        for _ in range(max_redirects):
            location = answer.location() if answer.status in (301, 302, 303, 307, 308) else None
            if location is None:
                return answer
            answer = self.request(method, location)
        raise ResolverError("invalid_answer", "too many redirects")
