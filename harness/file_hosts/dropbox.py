"""A fake of ``www.dropbox.com`` for the Dropbox resolver's tests: the ``/l/…`` click-tracking links of Dropbox's
notifications, each answering ``GET|HEAD`` with a ``302`` to the target a test gives (a share link, a sign-in or
unsubscribe page, another ``/l/`` link, a look-alike host), a status, or ``404`` when unknown; and the pages those
targets name (share pages, ``/account/unsubscribe``…), which answer ``200`` and record that they were fetched (a
test asserts they never are). It cannot show what Dropbox counts as a click, nor its real tracking-link catalogue.
"""

from __future__ import annotations

from flask import Flask, Response, request

from harness.file_hosts.http_fake import FakeHost


class FakeDropbox(FakeHost):
    name = "fake-dropbox"

    def __init__(self, *, tls: bool = False) -> None:
        self.tracking: dict[str, str | int] = {}   # /l/… path -> Location of a 302, or a status
        self.pages_fetched: list[str] = []
        super().__init__(self._make_app(), tls=tls)

    def track(self, path: str, target: str | int) -> None:
        self.tracking[path] = target

    def _make_app(self) -> Flask:
        app = Flask(__name__)

        @app.route("/l/<path:rest>", methods=["GET", "HEAD"])
        def tracking_link(rest: str) -> Response:
            target = self.tracking.get(request.path)
            if target is None:
                return Response("<html>Not found</html>", status=404, content_type="text/html")
            if isinstance(target, int):
                return Response("<html>page</html>", status=target, content_type="text/html")
            return Response("", status=302, headers={"Location": target})

        @app.route("/<path:rest>", methods=["GET", "HEAD"])
        def page(rest: str) -> Response:
            self.pages_fetched.append(request.path)
            return Response("<html>a Dropbox page</html>", status=200, content_type="text/html")

        return app
