"""A fake of SwissTransfer's public link API (``SWISSTRANSFER_API_BASE`` = ``<origin>/api``), in the shapes
Infomaniak's open-source clients read (multiplatform-SwissTransfer's ``TransferApi``/``ContainerApi``/``FileApi``
and ``FetchTransferException``): ``GET /api/links/<linkUUID>`` answers ``{"result": "success", "data": {linkUUID,
downloadCounterCredit, expiredDate, downloadHost, container: {needPassword, numberOfFile, files: [{UUID, fileName,
fileSizeInBytes, …}]}}}``; a refusal is 404 (``Transfer not found``, ``expired``, ``wait_virus_check``) or 401
(``need_password``) with the reason in its text. ``GET /api/download/<linkUUID>/<fileUUID>`` serves a file's bytes
(for a run whose download host is intercepted to this fake). The download host it names is
``dl-<n>.swisstransfer.com`` unless a test gives another (a look-alike).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from flask import Flask, Response, jsonify

from harness.file_hosts.transfer_host import TransferHostFake

_DATE = "%Y-%m-%d %H:%M:%S"


@dataclass
class FakeFile:
    name: str
    content: bytes
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class FakeTransfer:
    link_uuid: str
    files: list[FakeFile]
    expires_at: float
    credit: int = 250
    password: bool = False
    refusal: str | None = None  # "expired", "wait_virus_check": answered as SwissTransfer refuses
    download_host: str = "dl-j5769qrh.swisstransfer.com"


def _date(epoch: float) -> str:
    return time.strftime(_DATE, time.gmtime(epoch))


class SwissTransferFake(TransferHostFake):
    name = "swisstransfer-fake"

    def __init__(self, *, tls: bool = True) -> None:
        self.transfers: dict[str, FakeTransfer] = {}
        super().__init__(tls=tls)

    @property
    def api_base(self) -> str:
        return f"{self.origin}/api"

    def add_transfer(self, files: dict[str, bytes], *, expires_in: float = 7 * 86400, credit: int = 250,
                     password: bool = False, refusal: str | None = None,
                     download_host: str = "dl-j5769qrh.swisstransfer.com") -> FakeTransfer:
        transfer = FakeTransfer(str(uuid.uuid4()), [FakeFile(n, c) for n, c in files.items()],
                                time.time() + expires_in, credit, password, refusal, download_host)
        self.transfers[transfer.link_uuid] = transfer
        return transfer

    def routes(self, app: Flask) -> None:
        app.add_url_rule("/api/links/<link>", "link", self._link)
        app.add_url_rule("/api/download/<link>/<file_uuid>", "download", self._download)

    def _link(self, link: str) -> Response:
        transfer = self.transfers.get(link)
        if transfer is None:
            return _refusal(404, "not_found", "Transfer not found")
        if transfer.refusal == "expired":
            return _refusal(404, "expired", "Transfer expired")
        if transfer.refusal == "wait_virus_check":
            return _refusal(404, "wait_virus_check", "Virus check in progress")
        if transfer.password:
            return _refusal(401, "need_password", "Transfer need a password")
        created = _date(transfer.expires_at - 30 * 86400)
        expired = _date(transfer.expires_at)
        container_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, transfer.link_uuid))
        files = [{"containerUUID": container_uuid, "UUID": item.uuid, "fileName": item.name,
                  "fileSizeInBytes": len(item.content), "downloadCounter": 0, "createdDate": created,
                  "expiredDate": expired, "eVirus": "NOT_VIRUS_CHECKED", "deletedDate": None, "mimeType": "",
                  "receivedSizeInBytes": len(item.content), "path": None} for item in transfer.files]
        data = {"linkUUID": transfer.link_uuid, "containerUUID": container_uuid,
                "downloadCounterCredit": transfer.credit, "createdDate": created, "expiredDate": expired,
                "isDownloadOnetime": 0, "isMailSent": 0, "downloadHost": transfer.download_host,
                "container": {"UUID": container_uuid, "duration": 30, "createdDate": created, "expiredDate": expired,
                              "numberOfFile": len(files), "message": "", "needPassword": 0, "lang": "en_GB",
                              "sizeUploaded": sum(len(f.content) for f in transfer.files), "deletedDate": None,
                              "swiftVersion": 4, "downloadLimit": 250, "source": "ST", "WSUser": None,
                              "files": files}}
        return jsonify({"result": "success", "data": data})

    def _download(self, link: str, file_uuid: str) -> Response:
        transfer = self.transfers.get(link)
        item = next((f for f in transfer.files if f.uuid == file_uuid), None) if transfer else None
        if item is None:
            return Response(status=404)
        return Response(item.content, mimetype="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{item.name}"'})


def _refusal(status: int, kind: str, message: str) -> Response:
    response = jsonify({"result": "error", "data": {"type": kind, "message": message}})
    response.status_code = status
    return response
