"""The provider registry: one module per provider in this package, each exporting its ``PROVIDER``
(``email_processing.providers.base.Provider``), listed once in ``PROVIDERS``. Adding a provider is one module and one
line here. The order is the order in which providers are asked whether a URL is theirs (their domains do not overlap)
and the order of ``make providers-json``; the first four keep the order they had in ``email_processing.links``.
"""

from __future__ import annotations

from email_processing.providers import (
    box,
    dropbox,
    fromsmash,
    gdrive,
    mega,
    onedrive,
    pcloud,
    sharepoint,
    swisstransfer,
    wetransfer,
)
from email_processing.providers.base import HostRule, Provider

PROVIDERS: tuple[Provider, ...] = (
    dropbox.PROVIDER,
    fromsmash.PROVIDER,
    swisstransfer.PROVIDER,
    wetransfer.PROVIDER,
    gdrive.PROVIDER,
    onedrive.PROVIDER,
    sharepoint.PROVIDER,
    box.PROVIDER,
    pcloud.PROVIDER,
    mega.PROVIDER,
)

PROVIDER_NAMES: tuple[str, ...] = tuple(provider.name for provider in PROVIDERS)


def provider_named(name: str) -> Provider:
    """The registered provider called ``name`` (KeyError when there is none)."""
    for provider in PROVIDERS:
        if provider.name == name:
            return provider
    raise KeyError(name)


__all__ = ["PROVIDERS", "PROVIDER_NAMES", "HostRule", "Provider", "provider_named"]
