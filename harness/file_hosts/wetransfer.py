"""A fake of WeTransfer's web-client download API (undocumented; shapes as community downloaders describe them):
``WETRANSFER_API_BASE`` = ``<origin>/api/v4``. ``POST /api/v4/transfers/<id>/prepare-download`` with
``{"security_hash"[, "recipient_id"]}`` answers ``{id, state, expires_at, password_protected, security_hash, size,
files: [{id, name, size, item_type}]}`` (404 for an unknown transfer or a wrong hash); ``POST …/download`` with
``"intent": "entire_transfer"`` answers ``{"direct_link": "https://download.wetransfer.com/…"}`` (another host when a
test asks for a look-alike), and ``GET /eu2/<id>/<token>`` (the direct link, reached through the Worker's outbound
interception) serves the one file, or a zip of all of them. Short links: ``GET /t-<code>`` redirects (302) hop by
hop — through more short codes on this fake when asked — to the transfer's
``https://wetransfer.com/downloads/<id>/<hash>`` (or any target a test gives), the way ``we.tl`` does; the fake
plays the short link's origin.
"""

from __future__ import annotations

import io
import secrets
import time
import zipfile
from dataclasses import dataclass

from flask import Flask, Response, jsonify, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from harness.file_hosts.transfer_host import TransferHostFake


@dataclass
class FakeWeTransfer:
    transfer_id: str
    security_hash: str
    files: dict[str, bytes]
    expires_at: float
    state: str = "downloadable"
    password: bool = False
    recipient_id: str | None = None
    direct_host: str = "download.wetransfer.com"

    @property
    def landing_url(self) -> str:
        recipient = f"{self.recipient_id}/" if self.recipient_id else ""
        return f"https://wetransfer.com/downloads/{self.transfer_id}/{recipient}{self.security_hash}"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class WeTransferFake(TransferHostFake):
    name = "wetransfer-fake"

    def __init__(self, *, tls: bool = True) -> None:
        self.transfers: dict[str, FakeWeTransfer] = {}
        self.short_links: dict[str, str] = {}
        super().__init__(tls=tls)

    @property
    def api_base(self) -> str:
        return f"{self.origin}/api/v4"

    def add_transfer(self, files: dict[str, bytes], *, expires_in: float = 7 * 86400, state: str = "downloadable",
                     password: bool = False, recipient: bool = False,
                     direct_host: str = "download.wetransfer.com") -> FakeWeTransfer:
        transfer = FakeWeTransfer(secrets.token_hex(23), secrets.token_hex(3), files, time.time() + expires_in,
                                  state, password, secrets.token_hex(23) if recipient else None, direct_host)
        self.transfers[transfer.transfer_id] = transfer
        return transfer

    def add_short_link(self, target: str, *, hops: int = 1) -> str:
        """A short link on this fake that reaches ``target`` after ``hops`` redirects; its URL."""
        for _ in range(hops):
            code = f"t-{secrets.token_urlsafe(8)}"
            self.short_links[code] = target
            target = f"{self.origin}/{code}"
        return target

    def routes(self, app: Flask) -> None:
        app.add_url_rule("/<code>", "short", self._short)
        app.add_url_rule("/api/v4/transfers/<transfer_id>/prepare-download", "prepare", self._prepare,
                         methods=["POST"])
        app.add_url_rule("/api/v4/transfers/<transfer_id>/download", "download", self._download, methods=["POST"])
        app.add_url_rule("/eu2/<transfer_id>/<token>", "direct", self._direct)

    def _direct(self, transfer_id: str, token: str) -> Response:
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            return _not_found()
        if len(transfer.files) == 1:
            return Response(next(iter(transfer.files.values())), mimetype="application/octet-stream")
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
            for name, content in transfer.files.items():
                bundle.writestr(name, content)
        return Response(archive.getvalue(), mimetype="application/zip")

    def _short(self, code: str) -> BaseResponse:
        target = self.short_links.get(code)
        if target is None:
            return Response("not found", status=404)
        return redirect(target, code=302)

    def _transfer(self, transfer_id: str) -> FakeWeTransfer | None:
        transfer = self.transfers.get(transfer_id)
        body = request.get_json(silent=True) or {}
        if transfer is None or body.get("security_hash") != transfer.security_hash:
            return None
        if transfer.recipient_id is not None and body.get("recipient_id") != transfer.recipient_id:
            return None
        return transfer

    def _prepare(self, transfer_id: str) -> Response:
        transfer = self._transfer(transfer_id)
        if transfer is None:
            return _not_found()
        files = [{"id": secrets.token_hex(23), "name": name, "size": len(content), "item_type": "file",
                  "retries": 0, "previewable": False} for name, content in transfer.files.items()]
        return jsonify({"id": transfer.transfer_id, "state": transfer.state, "transfer_type": 4,
                        "shortened_url": "https://we.tl/t-fake", "expires_at": _iso(transfer.expires_at),
                        "password_protected": transfer.password, "uploaded_at": _iso(transfer.expires_at - 604800),
                        "expiry_in_seconds": max(0, int(transfer.expires_at - time.time())),
                        "size": sum(len(c) for c in transfer.files.values()), "deleted_at": None,
                        "recipient_id": transfer.recipient_id, "security_hash": transfer.security_hash,
                        "display_name": next(iter(transfer.files), ""), "files": files})

    def _download(self, transfer_id: str) -> Response:
        transfer = self._transfer(transfer_id)
        body = request.get_json(silent=True) or {}
        if transfer is None or body.get("intent") != "entire_transfer":
            return _not_found()
        token = secrets.token_urlsafe(24)
        return jsonify({"direct_link": f"https://{transfer.direct_host}/eu2/{transfer.transfer_id}/{token}"})


def _not_found() -> Response:
    response = jsonify({"success": False, "message": "Couldn't find transfer"})
    response.status_code = 404
    return response
