"""pCloud: public links ``u.pcloud.link/publink/show?code=<code>`` (US data region) and ``e.pcloud.link/…`` (EU), and
a file inside one, ``/file/<n>?code=<code>``; the ``code`` is the link. Files and folders share the form. The direct
download is an API call (``getpublinkdownload``), resolution's; it answers with hosts on ``pcloud.com``.
"""

from __future__ import annotations

from email_processing.providers.base import HostRule, Provider, path

_CODE = frozenset({"code"})

PROVIDER = Provider(
    "pcloud",
    (
        HostRule("pcloud.link", path(r"^/publink/show/?$"), _CODE),
        HostRule("pcloud.link", path(r"^/file/\d+/?$"), _CODE),
    ),
    copyable=True,
    download_hosts=("pcloud.link", "pcloud.com"),
    key_params=_CODE,
)
