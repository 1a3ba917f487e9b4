"""A fake of pCloud's public-link API (``api.pcloud.com``) for the pCloud resolver's tests: ``GET /showpublink?code=``
and ``GET /getpublinkdownload?code=[&fileid=]`` answering as pCloud documents, always HTTP 200 with a JSON
``result`` (0, or an error code a test sets per link: 7001 for an unknown code), ``metadata`` (a file, or a folder
with recursive ``contents``), and download links (``hosts``, ``path``, ``expires`` as an RFC 2822 date). The
download hosts it names (``p-lux3.pcloud.com`` by default, or a look-alike a test sets) are served here only for
the Worker (its outbound requests intercepted to this fake): ``GET <path>`` of an issued link answers the file, that
many zero bytes; the resolver only checks them. It cannot show pCloud's password-protected links (their answer is
undocumented), per-IP limits, or whether a download link is bound to the requesting IP.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, jsonify, request

from harness.file_hosts.http_fake import FakeHost


@dataclass
class PublicLink:
    metadata: dict[str, Any] = field(default_factory=dict)
    result: int = 0                      # an error code for every call on this link
    download_result: int = 0             # an error code for getpublinkdownload only
    hosts: tuple[str, ...] = ("p-lux3.pcloud.com", "c167.pcloud.com")
    lifetime: float = 6 * 3600


def file_metadata(name: str, size: int, fileid: int = 1001) -> dict[str, Any]:
    return {"name": name, "size": size, "isfolder": False, "fileid": fileid, "id": f"f{fileid}",
            "contenttype": "application/octet-stream"}


def folder_metadata(name: str, contents: list[dict[str, Any]], folderid: int = 2001) -> dict[str, Any]:
    return {"name": name, "isfolder": True, "folderid": folderid, "id": f"d{folderid}", "contents": contents}


class FakePCloud(FakeHost):
    name = "fake-pcloud"

    def __init__(self, *, tls: bool = False) -> None:
        self.links: dict[str, PublicLink] = {}
        self.issued: list[tuple[str, str]] = []   # (code, path) of every download link handed out
        self._sizes: dict[str, int] = {}           # path of an issued link -> the file's size
        super().__init__(self._make_app(), tls=tls)

    def add(self, code: str, link: PublicLink) -> None:
        self.links[code] = link

    def _link(self) -> PublicLink | Response:
        link = self.links.get(request.args.get("code", ""))
        if link is None:
            return jsonify({"result": 7001, "error": "Invalid link 'code'."})
        if link.result:
            return jsonify({"result": link.result, "error": "an error pCloud documents"})
        return link

    def _make_app(self) -> Flask:
        app = Flask(__name__)

        @app.get("/showpublink")
        def showpublink() -> Response:
            link = self._link()
            if isinstance(link, Response):
                return link
            return jsonify({"result": 0, "metadata": link.metadata})

        @app.get("/getpublinkdownload")
        def getpublinkdownload() -> Response:
            link = self._link()
            if isinstance(link, Response):
                return link
            if link.download_result:
                return jsonify({"result": link.download_result, "error": "an error pCloud documents"})
            item = link.metadata
            if item.get("isfolder"):
                wanted = request.args.get("fileid")
                if not wanted:
                    return jsonify({"result": 1029, "error": "Please provide 'fileid'."})
                item = next((f for f in _files(link.metadata) if str(f.get("fileid")) == wanted), {})
                if not item:
                    return jsonify({"result": 2009, "error": "File not found."})
            path = f"/{secrets.token_urlsafe(24)}/{quote(item['name'])}"
            self.issued.append((request.args.get("code", ""), path))
            self._sizes[path] = int(item.get("size", 0))
            return jsonify({"result": 0, "path": path, "hosts": list(link.hosts),
                            "expires": formatdate(time.time() + link.lifetime)})

        app.add_url_rule("/<token>/<path:name>", "issued_file", self._issued_file)
        return app

    def _issued_file(self, token: str, name: str) -> Response:
        size = self._sizes.get(f"/{token}/{quote(name)}")
        if size is None:
            return Response("not found", status=404)
        return Response(b"\0" * size, mimetype="application/octet-stream")


def _files(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for item in metadata.get("contents") or ():
        found.extend(_files(item) if item.get("isfolder") else [item])
    return found
