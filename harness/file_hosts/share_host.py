"""A fake share host for the resolvers that follow a share link's redirects to its download (OneDrive's ``1drv.ms``
and ``onedrive.live.com``, SharePoint's ``…sharepoint.com``, Box's ``/shared/static/``): one origin playing every
host of a provider, each path (query ignored) answering ``GET|HEAD`` with what a test gives: ``Redirect(location)``
(a 302: the next hop, a sign-in page, a look-alike host), ``Download(name, size)`` (``Content-Disposition:
attachment`` and ``Content-Length``, a body of zeros on GET) or ``Page(status)`` (an HTML page: a viewer, a
password prompt, a 404). Unknown paths answer 404. Every request is recorded with its query, so a test can say
which form was asked. It cannot show the providers' real redirect chains as they change, nor their cookies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator
from urllib.parse import quote

from flask import Flask, Response, request

from harness.file_hosts.http_fake import FakeHost


@dataclass(frozen=True)
class Redirect:
    location: str
    status: int = 302


@dataclass(frozen=True)
class Download:
    name: str
    size: int


@dataclass(frozen=True)
class Page:
    status: int = 200
    html: str = "<html><body>a page</body></html>"


Route = Redirect | Download | Page


class FakeShareHost(FakeHost):
    name = "fake-share-host"

    def __init__(self, *, tls: bool = False) -> None:
        self.routes: dict[str, Route] = {}
        super().__init__(self._make_app(), tls=tls)

    def route(self, path: str, answer: Route) -> None:
        self.routes[path] = answer

    def _make_app(self) -> Flask:
        app = Flask(__name__)

        @app.route("/", defaults={"rest": ""}, methods=["GET", "HEAD"])
        @app.route("/<path:rest>", methods=["GET", "HEAD"])
        def answer(rest: str) -> Response:
            route = self.routes.get(request.path)
            if route is None:
                return Response("<html>404</html>", status=404, content_type="text/html")
            if isinstance(route, Redirect):
                return Response("", status=route.status, headers={"Location": route.location})
            if isinstance(route, Page):
                return Response(route.html, status=route.status, content_type="text/html; charset=utf-8")
            return _download(route)

        return app


def _download(file: Download) -> Response:
    def zeros() -> Iterator[bytes]:
        left = file.size
        while left > 0:
            chunk = min(left, 65536)
            left -= chunk
            yield b"\0" * chunk

    disposition = f"attachment; filename*=UTF-8''{quote(file.name)}"
    return Response(zeros(), status=200, content_type="application/octet-stream",
                    headers={"Content-Disposition": disposition, "Content-Length": str(file.size)})
