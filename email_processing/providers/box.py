"""Box: shared links ``app.box.com/s/<id>`` (also ``<company>.app.box.com``, ``www.box.com``, ``<company>.box.com``),
custom (vanity) shared links ``/v/<name>``, and the ``/shared/static/<id>[.ext]`` download form of a shared file.
Only shared links: ``/file/<n>`` and ``/folder/<n>`` pages open only for the owner's collaborators, so they are not
deliveries. Whether an ``/s/`` link is a file or a folder the URL does not tell. Downloads come from ``*.boxcloud.com``.
"""

from __future__ import annotations

from email_processing.providers.base import HostRule, Provider, path

PROVIDER = Provider(
    "box",
    (HostRule("box.com", path(r"^/(?:s|v)/[A-Za-z0-9_-]+(?:/file/\d+)?/?$|^/shared/static/[A-Za-z0-9]+(?:\.\w+)?$")),),
    copyable=True,
    download_hosts=("box.com", "boxcloud.com"),
)
