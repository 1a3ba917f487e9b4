"""The IMAP adapter: one mailbox connection with a bounded wait on every network operation.

It owns the talk with the IMAP server — connect, TLS (implicit or STARTTLS, verified), login, select, UID
search/fetch/store, IDLE, NOOP — on top of IMAPClient, and translates every library, socket and TLS error into
this module's exceptions. Each operation carries a name for the logs (connect, tls, login, select, search,
fetch, store, idle, noop); a socket that stays silent longer than ``IMAP_TIMEOUT_SECONDS`` ends that operation
with ``ImapTimeout``, a WARNING ``IMAP: timeout after <n>s during <op>`` and a hard close of the socket, so no
thread ever stays blocked. Everything blocks in the caller's thread: this module starts no thread.
Messages are addressed by UID only, and bodies are fetched with ``BODY.PEEK`` so reading never sets ``\\Seen``.
"""

from __future__ import annotations

import datetime as dt
import imaplib
import logging
import re
import selectors
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Iterable, NoReturn, Protocol, Sequence

from imapclient import IMAPClient, SocketTimeout
from imapclient import exceptions as imapclient_errors
from imapclient import tls as imapclient_tls
from imapclient.response_parser import parse_response

from config import MailboxConfig, OAuth2Credentials, TlsMode
from services.oauth.sasl import OAuth2SaslAuthenticator

logger = logging.getLogger(__name__)

# Logout on close() gets at most this long (or IMAP_TIMEOUT_SECONDS if shorter): closing must be quick.
CLOSE_TIMEOUT_SECONDS = 2.0
_PART_RE = re.compile(r"^(?:[1-9][0-9]*(?:\.[1-9][0-9]*)*(?:\.(?:HEADER|TEXT|MIME))?|HEADER|TEXT)$")
_META_ITEMS = [b"UID", b"RFC822.SIZE", b"INTERNALDATE", b"FLAGS", b"BODYSTRUCTURE", b"BODY.PEEK[HEADER]"]


# --- errors ---------------------------------------------------------------------------------------------------

class ImapError(Exception):
    """Any IMAP failure. ``op`` names the operation when known: connect, tls, login, select, search, fetch, store,
    idle or noop."""

    def __init__(self, message: str, op: str | None = None) -> None:
        super().__init__(message)
        self.op = op


class ImapTimeout(ImapError):
    """The server stayed silent longer than ``seconds`` during ``op``; the connection was closed."""

    def __init__(self, op: str, seconds: float) -> None:
        super().__init__(f"IMAP: timeout after {seconds:g}s during {op}", op)
        self.seconds = seconds


class ImapAuthError(ImapError):
    """The server refused the login. The message names server and user, never the password."""


class ImapConnectionError(ImapError):
    """The connection could not be made or was lost (refused, reset, TLS failure, BYE); it is closed."""


class ImapMessageGone(ImapError):
    """The UID does not (or no longer) exist in the selected mailbox, e.g. expunged meanwhile."""

    def __init__(self, uid: int, op: str) -> None:
        super().__init__(f"IMAP: no message with UID {uid} in the selected mailbox", op)
        self.uid = uid


# --- values ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MailboxState:
    uidvalidity: int
    uidnext: int
    permanent_flags: tuple[str, ...]
    keywords_allowed: bool  # PERMANENTFLAGS holds \* (any new keyword may be stored)


@dataclass(frozen=True)
class MessageMeta:
    uid: int
    size: int
    internaldate: dt.datetime | None  # aware, UTC (None only if a server left it out of the FETCH response)
    flags: tuple[str, ...]
    bodystructure: Any  # IMAPClient's BodyData, as the server sent it; see text_parts()
    header_bytes: bytes


@dataclass(frozen=True)
class PartInfo:
    part: str  # IMAP section, e.g. "1", "1.2"
    content_type: str  # lower case, e.g. "text/plain"
    charset: str | None
    transfer_encoding: str  # lower case, e.g. "quoted-printable"
    size: int  # octets as transferred (before decoding)
    is_attachment: bool


class LocalGuard(Protocol):
    def check_local(self) -> None: ...


# --- body structure (pure) ------------------------------------------------------------------------------------

def walk_parts(bodystructure: Any) -> list[PartInfo]:
    """Every leaf of a BODYSTRUCTURE in order; a message/rfc822 part is one leaf (its insides are not walked)."""
    out: list[PartInfo] = []
    _walk(bodystructure, "", out)
    return out


def text_parts(bodystructure: Any) -> list[PartInfo]:
    """The text/plain and text/html leaves that are not attachments (message/rfc822 insides skipped)."""
    return [info for info in walk_parts(bodystructure)
            if info.content_type in ("text/plain", "text/html") and not info.is_attachment]


def _walk(node: Any, section: str, out: list[PartInfo]) -> None:
    if node and isinstance(node[0], (list, tuple)) and not isinstance(node[0], (bytes, str)):
        for index, child in enumerate(node[0], start=1):
            _walk(child, f"{section}.{index}" if section else str(index), out)
        return
    maintype, subtype = _text(node[0]).lower(), _text(node[1]).lower()
    params = _pairs(node[2] if len(node) > 2 else None)
    # Where the extension data starts depends on the kind of leaf (RFC 3501 body-type-1part):
    # text/* has a line count, message/rfc822 an envelope, a body and a line count.
    if maintype == "text":
        disposition_index = 9
    elif (maintype, subtype) == ("message", "rfc822"):
        disposition_index = 11
    else:
        disposition_index = 8
    disposition = node[disposition_index] if len(node) > disposition_index else None
    disposition_type, disposition_params = None, {}
    if isinstance(disposition, (list, tuple)) and disposition:
        disposition_type = _text(disposition[0]).lower()
        disposition_params = _pairs(disposition[1] if len(disposition) > 1 else None)
    is_attachment = disposition_type == "attachment" or "filename" in disposition_params
    size = node[6] if len(node) > 6 and isinstance(node[6], int) else 0
    out.append(PartInfo(part=section or "1", content_type=f"{maintype}/{subtype}",
                        charset=params.get("charset"),
                        transfer_encoding=_text(node[5] if len(node) > 5 else None).lower() or "7bit",
                        size=size, is_attachment=is_attachment))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def _pairs(value: Any) -> dict[str, str]:
    """IMAP parameter list (k1 v1 k2 v2 ...) → dict with lower-case keys."""
    if not isinstance(value, (list, tuple)):
        return {}
    items = list(value)
    return {_text(items[i]).lower(): _text(items[i + 1]) for i in range(0, len(items) - 1, 2)}


# --- connection set-up with named phases ----------------------------------------------------------------------

class _PhasedIMAP4TLS(imapclient_tls.IMAP4_TLS):
    """IMAPClient's implicit-TLS transport, reporting when the TLS handshake starts and ends."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext, timeout: float, on_phase) -> None:
        self._on_phase = on_phase
        super().__init__(host, port, ssl_context, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout or self._timeout)
        self._on_phase("tls")
        try:
            # The handshake inherits the socket's timeout: a server that never speaks TLS is bounded too.
            wrapped = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self._on_phase("connect")  # what follows is the server greeting
        return wrapped


class _PhasedIMAPClient(IMAPClient):
    # Overrides IMAPClient._create_IMAP4 (IMAPClient 4.1.0, pinned) only to name the TLS phase in timeouts.
    def __init__(self, *args: Any, on_phase, **kwargs: Any) -> None:
        self._on_phase = on_phase
        super().__init__(*args, **kwargs)

    def _create_IMAP4(self):
        if self.ssl:
            return _PhasedIMAP4TLS(self.host, self.port, self.ssl_context, self._timeout.connect, self._on_phase)
        return super()._create_IMAP4()


class _ServerBye(Exception):
    pass


# --- the client -----------------------------------------------------------------------------------------------

class MailboxClient:
    """One IMAP connection to the mailbox ``mailbox`` describes, for the poller. Not thread-safe; use it from one
    thread.

    ``guard`` (optional) is an object with ``check_local()``; it is called before every IMAP command and
    whatever it raises (the lease's ``LeaseLost``) propagates unchanged. ``idle_alive_after`` is how long the
    server may stay silent during IDLE before ``idle_wait`` checks it is alive (default: the mailbox's poll
    interval, ``EMAIL_POLLING_INTERVAL_SECONDS``).
    """

    def __init__(self, mailbox: MailboxConfig, guard: LocalGuard | None = None, *,
                 idle_alive_after: float | None = None, sign_in: Any = None) -> None:
        """``sign_in``: the mailbox's ``services.oauth.sign_in.OAuthSignIn`` when it signs in with OAuth2."""
        self._mailbox = mailbox
        self._guard = guard
        self._sign_in = sign_in
        self.token: Any = None  # the access token this session signed in with (OAuth2; None: a password)
        self._timeout = float(mailbox.timeout_seconds)
        if idle_alive_after is None:
            idle_alive_after = mailbox.poll_interval_seconds
        self._idle_alive_after = float(idle_alive_after)
        self._idle_heard_at = 0.0
        self._offers_idle: bool | None = None
        self._client: _PhasedIMAPClient | None = None
        self._state: MailboxState | None = None
        self._idling = False
        self._phase = "connect"
        self._refusal_told: set[str] = set()  # keywords add_flags said it leaves out, since the last select()

    # --- state ----------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def mailbox_state(self) -> MailboxState | None:
        """The state returned by the last ``select()`` on this connection."""
        return self._state

    @property
    def idling(self) -> bool:
        return self._idling

    def __enter__(self) -> "MailboxClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- connection -----------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection, secure it (implicit TLS or STARTTLS unless plain was asked for) and log in."""
        mailbox = self._mailbox
        oauth2 = isinstance(mailbox.credentials, OAuth2Credentials)
        if oauth2 and self._sign_in is None:
            raise ImapError("IMAP: an oauth2 mailbox needs its sign-in (a token provider)", "connect")
        if not mailbox.server or not mailbox.user or (not oauth2 and mailbox.password is None):
            raise ImapError("IMAP: IMAP_SERVER, EMAIL_ADDRESS and EMAIL_PASSWORD must be set", "connect")
        # The token first (OAuthError passes through): a token endpoint that fails opens no IMAP connection.
        token = self._sign_in.token() if oauth2 and self._sign_in is not None else None
        self.close()
        host, port = mailbox.server, mailbox.port
        use_ssl, starttls = mailbox.tls is TlsMode.IMPLICIT, mailbox.tls is TlsMode.STARTTLS
        context = self._tls_context() if (use_ssl or starttls) else None
        if not use_ssl and not starttls:
            logger.warning("IMAP: plain-text connection to %s:%s (no TLS): the password and mail cross the "
                           "network unencrypted", host, port)
        self._check_guard()
        self._phase = "connect"
        try:
            client = _PhasedIMAPClient(host, port=port, ssl=use_ssl, ssl_context=context,
                                       timeout=SocketTimeout(connect=self._timeout, read=self._timeout),
                                       on_phase=self._set_phase)
        except Exception as exc:
            self._raise_translated(self._phase, exc)
        client.normalise_times = False  # keep INTERNALDATE's zone; we convert to UTC ourselves
        self._client = client
        try:
            if starttls:
                if b"STARTTLS" not in self._call("tls", client.capabilities):
                    raise ImapConnectionError(f"IMAP: {host}:{port} does not offer STARTTLS", "tls")
                self._call("tls", client.starttls, context)
            if token is None:
                self._call("login", client.login, mailbox.user, mailbox.password)
            else:
                self._sasl_login(client, token)
        except BaseException:
            self.close()  # a half-open session (no TLS yet, or not logged in) is never left behind
            raise
        logger.info("IMAP: connected to %s:%s (%s)", host, port,
                    "TLS" if use_ssl else "STARTTLS" if starttls else "plain text")

    def _sasl_login(self, client: Any, token: Any) -> None:
        """Sign in with the access token over SASL (XOAUTH2 or OAUTHBEARER); a refusal forgets the token and says
        what the server's error challenge said (``invalid_token``…), never the token."""
        assert self._sign_in is not None
        authenticator = OAuth2SaslAuthenticator(self._sign_in.mechanism, self._mailbox.user, token.value)
        try:
            self._call("login", client.sasl_login, authenticator.mechanism, authenticator)
        except ImapAuthError as exc:
            self._sign_in.refused(token)
            status = authenticator.error_status
            raise ImapAuthError(f"{exc} (SASL {authenticator.mechanism}"
                                + (f", server status {status})" if status else ")"), "login") from exc
        self.token = token

    def close(self) -> None:
        """Log out with a short timeout, then close the socket. Never raises."""
        client, idling = self._client, self._idling
        self._client, self._state, self._idling, self._offers_idle = None, None, False, None
        if client is None:
            return
        try:
            client.socket().settimeout(min(CLOSE_TIMEOUT_SECONDS, self._timeout))
            if idling:
                client.idle_done()
            client.logout()  # imaplib shuts the socket down after LOGOUT, whatever the answer
        except Exception:
            self._shutdown(client)

    def _tls_context(self) -> ssl.SSLContext:
        # Certificate and host name verification on; IMAP_CA_FILE replaces the system store when set.
        try:
            return ssl.create_default_context(cafile=self._mailbox.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ImapConnectionError(f"IMAP: cannot load IMAP_CA_FILE: {exc}", "tls") from exc

    def _set_phase(self, phase: str) -> None:
        self._phase = phase

    # --- mailbox --------------------------------------------------------------------------------------------

    def capabilities(self) -> set[str]:
        client = self._require("connect")
        return {_text(cap).upper() for cap in self._call("connect", client.capabilities)}

    def has_idle(self) -> bool:
        return "IDLE" in self.capabilities()

    def select(self, mailbox: str) -> MailboxState:
        """SELECT (read-write, flags are stored later); returns UIDVALIDITY, UIDNEXT, EXISTS, PERMANENTFLAGS."""
        client = self._require("select")
        self._state = None
        self._refusal_told = set()
        info = self._call("select", client.select_folder, mailbox)
        uidnext = info.get(b"UIDNEXT")
        if uidnext is None:  # optional in RFC 3501's SELECT; STATUS always has it
            uidnext = self._call("select", client.folder_status, mailbox, [b"UIDNEXT"])[b"UIDNEXT"]
        permanent = tuple(_text(flag) for flag in info.get(b"PERMANENTFLAGS", ()))
        self._state = MailboxState(uidvalidity=int(info[b"UIDVALIDITY"]), uidnext=int(uidnext),
                                   permanent_flags=permanent,
                                   keywords_allowed="\\*" in permanent)
        return self._state

    def search_uids(self, criteria: Sequence[str | bytes | int], charset: str | None = None) -> list[int]:
        """UID SEARCH; ascending UIDs. E.g. ["UNSEEN", "UNKEYWORD", "$RenderSignalDone"]. Criteria with text
        beyond ASCII (a Message-ID, a subject) are sent with ``CHARSET UTF-8`` (IMAPClient encodes them as ASCII
        otherwise and fails before anything is sent)."""
        client = self._require_selected("search")
        if charset is None and any(isinstance(c, str) and not c.isascii() for c in criteria):
            charset = "UTF-8"
        return sorted(int(uid) for uid in self._call("search", client.search, list(criteria), charset))

    def uids_after(self, last_uid: int, limit: int) -> list[int]:
        """At most ``limit`` UIDs greater than ``last_uid``, ascending.

        ``UID n:*`` always matches the highest UID even when it is below n (RFC 3501), so it is filtered out.
        """
        if limit <= 0:
            return []
        uids = self.search_uids(["UID", f"{int(last_uid) + 1}:*"])
        return [uid for uid in uids if uid > last_uid][:limit]

    def fetch_meta(self, uids: Iterable[int]) -> dict[int, MessageMeta]:
        """Size, INTERNALDATE, flags, body structure and raw header of each UID still present (PEEK)."""
        wanted = sorted({int(uid) for uid in uids})
        if not wanted:
            return {}
        client = self._require_selected("fetch")
        data = self._call("fetch", client.fetch, wanted, _META_ITEMS)
        out: dict[int, MessageMeta] = {}
        for uid in wanted:
            item = data.get(uid)
            if not item or b"BODYSTRUCTURE" not in item:
                continue  # expunged meanwhile, or only an unsolicited FLAGS update
            internaldate = item.get(b"INTERNALDATE")
            if isinstance(internaldate, dt.datetime):
                if internaldate.tzinfo is None:
                    internaldate = internaldate.replace(tzinfo=dt.timezone.utc)
                internaldate = internaldate.astimezone(dt.timezone.utc)
            else:
                internaldate = None
            out[uid] = MessageMeta(uid=uid, size=int(item.get(b"RFC822.SIZE") or 0), internaldate=internaldate,
                                   flags=tuple(_text(flag) for flag in item.get(b"FLAGS", ())),
                                   bodystructure=item[b"BODYSTRUCTURE"],
                                   header_bytes=bytes(item.get(b"BODY[HEADER]") or b""))
        return out

    def fetch_full(self, uid: int) -> bytes:
        """The whole message (BODY.PEEK[]: \\Seen is not set)."""
        return self._fetch_section(int(uid), b"BODY.PEEK[]", b"BODY[]")

    def fetch_partial(self, uid: int, part: str, max_bytes: int) -> bytes:
        """At most ``max_bytes`` of body part ``part`` (an IMAP section such as "1.2"), not decoded."""
        if not _PART_RE.match(part):
            raise ImapError(f"IMAP: invalid body section {part!r}", "fetch")
        if max_bytes <= 0:
            return b""
        return self._fetch_section(int(uid), f"BODY.PEEK[{part}]<0.{int(max_bytes)}>".encode(),
                                   f"BODY[{part}]".encode())

    def _fetch_section(self, uid: int, item: bytes, key_prefix: bytes) -> bytes:
        client = self._require_selected("fetch")
        data = self._call("fetch", client.fetch, [uid], [item])
        values = data.get(uid) or {}
        for key, value in values.items():
            # The response key is e.g. b"BODY[1]<0>" for a partial fetch.
            if isinstance(key, bytes) and (key == key_prefix or key.startswith(key_prefix + b"<")):
                return bytes(value or b"")
        raise ImapMessageGone(uid, "fetch")

    text_parts = staticmethod(text_parts)
    walk_parts = staticmethod(walk_parts)

    def add_flags(self, uids: Iterable[int], flags: Iterable[str | bytes]) -> tuple[bytes, ...]:
        """UID STORE +FLAGS.SILENT. Keywords are sent only where PERMANENTFLAGS allows them (``\\*`` or listed);
        returns the flags actually sent. A keyword left out is said once per selected mailbox, not per call."""
        client = self._require_selected("store")
        state = self._require_selected_state("store")
        targets = sorted({int(uid) for uid in uids})
        allowed: list[bytes] = []
        refused: list[str] = []
        for flag in flags:
            try:
                raw = flag if isinstance(flag, bytes) else flag.encode("ascii")
                name = raw.decode("ascii")
            except UnicodeError:
                raise ImapError(f"IMAP: flags are ASCII atoms, not {flag!r}", "store") from None
            if raw.startswith(b"\\") or state.keywords_allowed or name in state.permanent_flags:
                allowed.append(raw)
            else:
                refused.append(name)
        if set(refused) - self._refusal_told:
            self._refusal_told.update(refused)
            logger.info("IMAP: the server keeps no keyword %s in this mailbox; storing %s only",
                        ", ".join(refused), b" ".join(allowed).decode() or "nothing")
        if not targets or not allowed:
            return tuple(allowed)
        self._call("store", client.add_flags, targets, allowed, silent=True)
        return tuple(allowed)

    def noop(self) -> list:
        client = self._require("noop")
        if self._idling:
            raise ImapError("IMAP: NOOP while IDLE is active; call idle_done() first", "noop")
        _, responses = self._call("noop", client.noop)
        return list(responses)

    # --- IDLE -----------------------------------------------------------------------------------------------

    def idle_start(self) -> None:
        client = self._require_selected("idle")
        if self._idling:
            return
        if self._offers_idle is None:  # asked once per connection: re-entering IDLE sends only IDLE
            self._offers_idle = b"IDLE" in self._call("idle", client.capabilities)
        if not self._offers_idle:
            raise ImapError("IMAP: the server does not offer IDLE", "idle")
        self._call("idle", client.idle)
        self._idling = True
        self._idle_heard_at = time.monotonic()

    def idle_wait(self, timeout: float, check_alive: bool = True) -> list:
        """Untagged responses (e.g. ``(3, b"EXISTS")``) that arrive within ``timeout`` seconds during IDLE.

        Returns as soon as something arrived, else ``[]`` after ``timeout``. When the server has then been
        silent for ``idle_alive_after`` seconds (default EMAIL_POLLING_INTERVAL_SECONDS) and ``check_alive`` is
        true, IDLE is ended and re-entered (DONE → OK → IDLE → +), which a stalled server cannot answer:
        ``ImapTimeout("idle")``, at most 2 × IMAP_TIMEOUT_SECONDS after this call's wait. So waiting in short
        slices costs no extra round trips, and a stall is noticed within the interval + the timeout.
        """
        client = self._require("idle")
        if not self._idling:
            raise ImapError("IMAP: idle_wait() without idle_start()", "idle")
        try:
            responses = self._read_idle_responses(client, max(0.0, float(timeout)))
        except _ServerBye as bye:
            self._abandon()
            raise ImapConnectionError(f"IMAP: the server ended the connection during IDLE: {bye}", "idle") from None
        except Exception as exc:
            self._raise_translated("idle", exc)
        if responses or not check_alive or time.monotonic() - self._idle_heard_at < self._idle_alive_after:
            return responses
        responses = self.idle_done()
        self.idle_start()
        return responses

    def idle_done(self) -> list:
        """End IDLE (DONE) and return the responses that arrived meanwhile."""
        client = self._require("idle")
        if not self._idling:
            return []
        _, responses = self._call("idle", client.idle_done)
        self._idling = False
        return list(responses)

    def _read_idle_responses(self, client: IMAPClient, timeout: float) -> list:
        # IMAPClient's idle_check() cannot tell a closed connection from a quiet one and can hand back half a
        # line; this reads whole lines only: wait for the socket, then each line with the normal read timeout.
        # It uses the imaplib object under IMAPClient (file buffer, _get_line), as idle_check() itself does.
        imap = client._imap
        sock = client.socket()
        deadline = time.monotonic() + timeout
        responses: list = []
        just_readable = False
        while True:
            buffered = self._peek_nonblocking(imap, sock)
            if buffered is None:
                pass  # TLS record not complete yet: wait for more bytes
            elif buffered:
                line = imap._get_line()
                self._idle_heard_at = time.monotonic()
                responses.append(_parse_idle_line(line))
                just_readable = False
                continue
            elif just_readable:
                raise ConnectionAbortedError("connection closed by the server during IDLE")
            if responses:
                return responses
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _wait_readable(sock, remaining):
                return responses
            just_readable = True

    def _peek_nonblocking(self, imap: imaplib.IMAP4, sock: socket.socket) -> bytes | None:
        """Bytes already buffered or readable now (b"" = none, or EOF if the socket polled readable);
        None when a TLS record is incomplete."""
        sock.setblocking(False)
        try:
            reader: Any = imap.file  # typed IO by imaplib; it is the socket's BufferedReader (makefile("rb"))
            return reader.peek(1)
        except (BlockingIOError, ssl.SSLWantReadError):
            return None
        finally:
            sock.settimeout(self._timeout)

    # --- plumbing -------------------------------------------------------------------------------------------

    def _check_guard(self) -> None:
        if self._guard is not None:
            self._guard.check_local()

    def _require(self, op: str) -> IMAPClient:
        if self._client is None:
            raise ImapConnectionError("IMAP: not connected", op)
        return self._client

    def _require_selected_state(self, op: str) -> MailboxState:
        self._require(op)
        if self._state is None:
            raise ImapError("IMAP: no mailbox selected", op)
        return self._state

    def _require_selected(self, op: str) -> IMAPClient:
        self._require_selected_state(op)
        client = self._require(op)
        if self._idling:
            raise ImapError(f"IMAP: {op} while IDLE is active; call idle_done() first", op)
        return client

    def _call(self, op: str, method, *args: Any, **kwargs: Any) -> Any:
        """Run one IMAP command: lease guard first, library errors translated."""
        self._check_guard()
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            self._raise_translated(op, exc)

    def _raise_translated(self, op: str, exc: Exception) -> NoReturn:
        translated = self._translate(op, exc)
        if translated is exc:
            raise exc
        raise translated from exc

    def _translate(self, op: str, exc: BaseException) -> BaseException:
        """Library/socket/TLS error → this module's error; the connection is closed unless still usable."""
        mailbox = self._mailbox
        where = f"{mailbox.server}:{mailbox.port}"
        if isinstance(exc, ImapError):
            return exc
        if _is_timeout(exc):
            logger.warning("IMAP: timeout after %ss during %s", f"{self._timeout:g}", op)
            self._abandon()
            return ImapTimeout(op, self._timeout)
        if isinstance(exc, imapclient_errors.LoginError):
            return ImapAuthError(self._scrub(f"IMAP: login failed for user {mailbox.user} at {where}: "
                                             f"{_reason(exc)}"), op)
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._abandon()
            return ImapConnectionError(f"IMAP: TLS certificate of {where} not trusted: {exc.verify_message}", op)
        if isinstance(exc, (OSError, EOFError, imaplib.IMAP4.abort)):
            self._abandon()
            return ImapConnectionError(self._scrub(f"IMAP: connection to {where} failed during {op}: "
                                                   f"{_reason(exc)}"), op)
        if isinstance(exc, imaplib.IMAP4.error):  # NO/BAD and IMAPClient's own errors: connection still usable
            return ImapError(self._scrub(f"IMAP: {op} failed: {_reason(exc)}"), op)
        return exc  # a programming error: let it surface as it is

    def _scrub(self, text: str) -> str:
        password = self._mailbox.password
        return text.replace(password, "***") if password else text

    def _abandon(self) -> None:
        """Drop the connection without a goodbye (after a timeout or a broken connection)."""
        client = self._client
        self._client, self._state, self._idling, self._offers_idle = None, None, False, None
        if client is not None:
            self._shutdown(client)

    @staticmethod
    def _shutdown(client: IMAPClient) -> None:
        try:
            client.shutdown()
        except Exception:
            try:
                client.socket().close()
            except Exception:
                pass


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return True
    # imaplib wraps errors of sendall() as "socket error: timed out"
    return isinstance(exc, imaplib.IMAP4.abort) and "timed out" in str(exc)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    match = re.fullmatch(r"b'(.*)'", text) or re.fullmatch(r'b"(.*)"', text)
    return match.group(1) if match else text


def _parse_idle_line(line: bytes) -> Any:
    if not line.startswith(b"* "):
        return (line,)
    text = line[2:]
    if text[:3].upper() == b"BYE":
        raise _ServerBye(text.decode("utf-8", "replace"))
    if text.startswith((b"OK ", b"NO ", b"BAD ")):
        return tuple(text.split(b" ", 1))
    return parse_response([text])


def _wait_readable(sock: socket.socket, timeout: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))
