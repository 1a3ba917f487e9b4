"""A fake of Smash's regional transfer API (``SMASH_API_BASE`` = this fake's origin, without ``{region}``: it
serves every region), in the shapes of Smash's official SDK (``@smash-sdk/transfer`` 07-2022 types):
``GET /transfer/<id>/preview?version=07-2022`` answers ``{"transfer": {id, status, filesNumber, size, region,
availabilityEndDate, …}, "urlsExpiredAt"}``; ``GET /transfer/<id>/files/preview?version=07-2022[&start=]`` a page of
files ``{"files": [{id, name, size, ext, download, …}], "next", "urlsExpiredAt"}`` (``page_size`` per page). Every
call needs ``Authorization: Bearer <api_key>`` (else 401 ``UnauthorizedError``); unknown transfer: 404
``NotFoundError``; a password-protected one: 401 ``PasswordDoesNotMatchError``. Signed download URLs are on
``download.<region>.fromsmash.co`` unless a test names another host (a look-alike). The real download host was not
verified.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from flask import Flask, Response, jsonify, request

from harness.file_hosts.transfer_host import TransferHostFake


@dataclass
class FakeSmashTransfer:
    transfer_id: str
    files: dict[str, bytes]
    expires_at: float
    status: str = "Uploaded"
    password: bool = False
    download_host: str = "download.eu-west-3.fromsmash.co"

    @property
    def url(self) -> str:
        return f"https://fromsmash.com/{self.transfer_id}"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


class SmashFake(TransferHostFake):
    name = "fromsmash-fake"

    def __init__(self, *, tls: bool = True, api_key: str = "smash-test-key", page_size: int = 3) -> None:
        self.api_key = api_key
        self.page_size = page_size
        self.transfers: dict[str, FakeSmashTransfer] = {}
        super().__init__(tls=tls)

    def add_transfer(self, files: dict[str, bytes], *, region_letter: str = "c", expires_in: float = 7 * 86400,
                     status: str = "Uploaded", password: bool = False,
                     download_host: str = "download.eu-west-3.fromsmash.co") -> FakeSmashTransfer:
        transfer_id = f"{secrets.token_urlsafe(8)[:10]}-{region_letter}t"
        transfer = FakeSmashTransfer(transfer_id, files, time.time() + expires_in, status, password, download_host)
        self.transfers[transfer_id] = transfer
        return transfer

    def routes(self, app: Flask) -> None:
        app.add_url_rule("/transfer/<transfer_id>/preview", "preview", self._preview)
        app.add_url_rule("/transfer/<transfer_id>/files/preview", "files", self._files)
        app.add_url_rule("/<transfer_id>/<int:index>", "file", self._file)

    def _file(self, transfer_id: str, index: int) -> Response:
        """A signed file URL (reached through the Worker's outbound interception): the file's bytes."""
        transfer = self.transfers.get(transfer_id)
        if transfer is None or not 0 <= index < len(transfer.files) or not request.args.get("X-Amz-Signature"):
            return _error(404, "TransferNotFoundError")
        return Response(list(transfer.files.values())[index], mimetype="application/octet-stream")

    def _checked(self, transfer_id: str) -> FakeSmashTransfer | Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "UnauthorizedError")
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            return _error(404, "NotFoundError")
        if transfer.password:
            return _error(401, "PasswordDoesNotMatchError")
        return transfer

    def _preview(self, transfer_id: str) -> Response:
        transfer = self._checked(transfer_id)
        if isinstance(transfer, Response):
            return transfer
        return jsonify({"transfer": {
            "id": transfer.transfer_id, "size": sum(len(c) for c in transfer.files.values()), "title": "",
            "region": "eu-west-3", "domain": "fromsmash.com", "status": transfer.status, "preview": "Full",
            "created": _iso(transfer.expires_at - 604800), "language": "en", "download": "Open",
            "filesNumber": len(transfer.files), "transferUrl": transfer.url,
            "availabilityEndDate": _iso(transfer.expires_at), "availabilityDuration": 604800,
            "availabilityStartDate": _iso(transfer.expires_at - 604800)}, "urlsExpiredAt": _iso(time.time() + 3600)})

    def _files(self, transfer_id: str) -> Response:
        transfer = self._checked(transfer_id)
        if isinstance(transfer, Response):
            return transfer
        names = list(transfer.files)
        start = int(request.args.get("start", "0") or 0)
        page = names[start:start + self.page_size]
        following = str(start + self.page_size) if start + self.page_size < len(names) else None
        files = [{"id": f"{transfer.transfer_id}-{index}", "ext": name.rsplit(".", 1)[-1], "name": name,
                  "size": len(transfer.files[name]), "crc32": 0, "preview": None, "thumbnail": None,
                  "download": f"https://{transfer.download_host}/{transfer.transfer_id}/{start + index}"
                              f"?X-Amz-Signature={secrets.token_hex(16)}"}
                 for index, name in enumerate(page)]
        return jsonify({"files": files, "next": following, "urlsExpiredAt": _iso(time.time() + 3600)})


def _error(status: int, name: str) -> Response:
    response = jsonify({"name": name, "code": status, "error": name.removesuffix("Error")})
    response.status_code = status
    return response
