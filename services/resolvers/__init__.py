"""The resolvers (issue 19): one module per provider in this package, each exporting its ``RESOLVER`` (a
``services.resolvers.base.Resolver``), listed once in ``RESOLVERS``. A provider without one resolves to ``none``.

``provider_http(config, deadline)`` is the one way a resolver gets its HTTP: a session that trusts the provider's CA
file (else the system store), the provider's timeout, and the hosts it may reach (its registry domains and download
hosts, plus the host of its configured base URL).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from config import ProviderConfig
from services.resolvers.base import ProviderHttp, Resolver, ResolverError

RESOLVERS: dict[str, Resolver] = {}

# --- file hosts: gdrive, dropbox, onedrive, sharepoint, box, pcloud (resolvers-hosts) ---
from services.resolvers import box, dropbox, gdrive, onedrive, pcloud, sharepoint  # noqa: E402

RESOLVERS["gdrive"] = gdrive.RESOLVER
RESOLVERS["dropbox"] = dropbox.RESOLVER
RESOLVERS["onedrive"] = onedrive.RESOLVER
RESOLVERS["sharepoint"] = sharepoint.RESOLVER
RESOLVERS["box"] = box.RESOLVER
RESOLVERS["pcloud"] = pcloud.RESOLVER
# --- end file hosts ---

# --- transfer services: swisstransfer, fromsmash, wetransfer ---
from services.resolvers import fromsmash as _fromsmash  # noqa: E402
from services.resolvers import swisstransfer as _swisstransfer  # noqa: E402
from services.resolvers import wetransfer as _wetransfer  # noqa: E402

RESOLVERS["swisstransfer"] = _swisstransfer.RESOLVER
RESOLVERS["fromsmash"] = _fromsmash.RESOLVER
RESOLVERS["wetransfer"] = _wetransfer.RESOLVER
# --- end of the transfer services ---


def resolver_for(provider: str) -> Resolver | None:
    return RESOLVERS.get(provider)


def provider_hosts(config: ProviderConfig) -> tuple[str, ...]:
    from email_processing.providers import provider_named

    try:
        registered = provider_named(config.id)
    except KeyError:
        return ()
    hosts = list(registered.domains) + list(registered.download_hosts)
    if config.endpoint is not None:
        host = urlsplit(config.endpoint.base_url).hostname
        if host:
            hosts.append(host)
    return tuple(dict.fromkeys(hosts))


def provider_http(config: ProviderConfig, deadline: float, session: Any = None) -> ProviderHttp:
    """HTTP for ``config``'s resolver until the monotonic ``deadline``."""
    if session is None:
        import requests

        session = requests.Session()
        if config.endpoint is not None and config.endpoint.ca_file:
            session.verify = config.endpoint.ca_file
            session.trust_env = False
    return ProviderHttp(config.id, provider_hosts(config), session=session, timeout=config.timeout_seconds,
                        deadline=deadline, base_url=config.endpoint.base_url if config.endpoint else None)


__all__ = ["RESOLVERS", "ProviderHttp", "Resolver", "ResolverError", "provider_hosts", "provider_http",
           "resolver_for"]
