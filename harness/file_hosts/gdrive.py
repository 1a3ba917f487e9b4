"""A fake of Google Drive's download host (``drive.usercontent.google.com``) for the gdrive resolver's tests.

``GET|HEAD /download?id=<id>&export=download`` answers as Drive does for a signed-out client: the file
(``Content-Disposition: attachment; filename=…; filename*=UTF-8''…``, ``Content-Length``), or for a file marked
``large`` the "can't scan this file for viruses" page whose ``download-form`` (hidden ``id``, ``export``,
``confirm=t``, ``uuid``) leads to the file once submitted with that uuid; ``404`` for an unknown id, a ``303`` to
``accounts.google.com`` for a file not shared with anyone with the link, a ``403`` "Quota exceeded" page, or a
redirect to any URL a test gives (a look-alike host). A file that needs its ``resourcekey`` answers 404 without it.
Bodies are zeros of the file's size (HEAD sends none). What it cannot show: Drive's real page markup as it changes,
per-IP quotas, and the cookies Drive sets along the way.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from html import escape
from typing import Iterator
from urllib.parse import quote

from flask import Flask, Response, request

from harness.file_hosts.http_fake import FakeHost


@dataclass(frozen=True)
class DriveFile:
    name: str
    size: int
    large: bool = False            # answered with the virus-scan warning page first
    shared: bool = True            # False: a sign-in redirect
    quota_exceeded: bool = False
    resource_key: str | None = None
    redirect_to: str | None = None  # answer a 302 to this URL instead
    form_action: str | None = None  # the warning page's form action (default: this fake's /download)
    bare_confirmed: bool = False    # the confirmed download without Content-Disposition / Content-Length


_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>
<p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={id}">{name}</a> ({rounded})</span> is too
large for Google to scan for viruses. Would you still like to download this file?</p>
<form id="download-form" action="{action}" method="get"><input type="submit" id="uc-download-link"
class="goog-inline-block jfk-button jfk-button-action" value="Download anyway"/><input type="hidden" name="id"
value="{id}"><input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t"><input
type="hidden" name="uuid" value="{uuid}"></form></div></div></body></html>"""


def _rounded(size: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}{unit}"
    return f"{size}"


class FakeGoogleDrive(FakeHost):
    name = "fake-gdrive"

    def __init__(self, *, tls: bool = False) -> None:
        self.files: dict[str, DriveFile] = {}
        self.issued_uuids: set[str] = set()
        super().__init__(self._make_app(), tls=tls)

    def add(self, file_id: str, file: DriveFile) -> None:
        self.files[file_id] = file

    def _make_app(self) -> Flask:
        app = Flask(__name__)

        @app.route("/download", methods=["GET", "HEAD"])
        def download() -> Response:
            file_id = request.args.get("id", "")
            file = self.files.get(file_id)
            if file is None or (file.resource_key and request.args.get("resourcekey") != file.resource_key):
                return Response("<html><body>Sorry, the file you have requested does not exist.</body></html>",
                                status=404, content_type="text/html; charset=utf-8")
            if file.redirect_to is not None:
                return Response("", status=302, headers={"Location": file.redirect_to})
            if not file.shared:
                target = "https://accounts.google.com/ServiceLogin?service=wise&passive=1209600&continue=" + \
                    quote(request.url, safe="")
                return Response("", status=303, headers={"Location": target})
            if file.quota_exceeded:
                return Response("<html><head><title>Google Drive - Quota exceeded</title></head><body>Too many "
                                "users have viewed or downloaded this file recently.</body></html>", status=403,
                                content_type="text/html; charset=utf-8")
            confirmed = request.args.get("confirm") == "t" and request.args.get("uuid") in self.issued_uuids
            if file.large and not confirmed:
                return self._warning_page(file_id, file)
            if confirmed and file.bare_confirmed:
                return Response(b"", status=200, content_type="application/octet-stream")
            return self._file(file)

        return app

    def _warning_page(self, file_id: str, file: DriveFile) -> Response:
        token = str(uuid.uuid4())
        self.issued_uuids.add(token)
        page = _PAGE.format(id=escape(file_id), name=escape(file.name), rounded=_rounded(file.size),
                            action=escape(file.form_action or f"{self.url}/download"), uuid=token)
        return Response(page, status=200, content_type="text/html; charset=utf-8")

    def _file(self, file: DriveFile) -> Response:
        def zeros() -> Iterator[bytes]:
            left = file.size
            while left > 0:
                chunk = min(left, 65536)
                left -= chunk
                yield b"\0" * chunk

        disposition = f"attachment; filename=\"{file.name.encode('ascii', 'replace').decode()}\"; " \
                      f"filename*=UTF-8''{quote(file.name)}"
        answer = Response(zeros(), status=200, content_type="application/octet-stream",
                          headers={"Content-Disposition": disposition, "Content-Length": str(file.size)})
        return answer
