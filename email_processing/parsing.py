"""Bytes → ``ParsedEmail``: headers decoded, the text parts decoded and capped, attachments never decoded.

Two entry points build the same value: ``parse_message(raw)`` for a whole message (the ``.eml`` command) and
``parse_parts(header_bytes, parts)`` for the IMAP path, which fetches the header block and only the text parts, each
with a byte limit. Neither raises on any input: unknown or mislabelled charsets fall back to UTF-8 and then
Windows-1252 (recorded in ``defects``), broken base64/quoted-printable is decoded as far as it goes.

Caps (bounded memory whatever the email weighs):
- ``HTML_CAP_BYTES`` = 1,048,576 bytes of UTF-8 of HTML, cut at a character boundary before any HTML parsing, with
  the WARNING ``HTML content truncated (exceeded 1MB limit)`` (``html_text.truncate_html``).
- ``TEXT_CAP_BYTES`` = 1,048,576 bytes of UTF-8 of text/plain, cut the same way, WARNING
  ``Text content truncated (exceeded 1MB limit)``.
- ``MAX_HEADER_CHARS`` = 16,384 characters per decoded header value (Subject/From); longer values are cut.
Before charset decoding at most ``RAW_LIMIT_FACTOR`` × cap bytes of a part are transfer-decoded, so a 50 MB base64
HTML part never becomes 50 MB of bytes. ``encoded_fetch_limit(cap, transfer_encoding)`` tells the IMAP side how many
encoded bytes to fetch to be sure of filling a cap.

Speed: the ``compat32`` policy is used for the MIME tree (the modern ``policy.default`` header machinery measured
about 2x slower per message here) and the few headers we need are decoded by hand with ``email.header``.
"""

from __future__ import annotations

import binascii
import codecs
import logging
import quopri
import re
from dataclasses import dataclass, field
from email import message_from_bytes
from email.header import decode_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from email_processing.html_text import HTML_CAP_BYTES, truncate_html, warn_html_truncated
from email_processing.sender import parse_from

logger = logging.getLogger(__name__)

TEXT_CAP_BYTES = 1_048_576
TEXT_TRUNCATED_WARNING = "Text content truncated (exceeded 1MB limit)"
MAX_HEADER_CHARS = 16_384
MAX_RAW_HEADER_CHARS = 4 * MAX_HEADER_CHARS  # read before RFC 2047 decoding (a 200 KB Subject exists in the wild)
MAX_SENDER_HEADERS = 20  # From and Authentication-Results occurrences kept (a second From is all it takes)
BODY_HEAD_BYTES = 1024
# Any charset yields at least one character (>= 1 UTF-8 byte) per 4 input bytes: 4x the cap is always enough.
RAW_LIMIT_FACTOR = 4
_MAX_PARTS = 1000  # a message with more MIME parts than this is read up to here

__all__ = [
    "HTML_CAP_BYTES", "TEXT_CAP_BYTES", "ParsedEmail", "TextPart", "parse_message", "parse_parts",
    "encoded_fetch_limit",
]


@dataclass(frozen=True)
class ParsedEmail:
    message_id: str | None
    subject: str
    date_header: str | None
    from_header: str
    sender_email: str
    text_plain: str
    html: str
    html_truncated: bool
    text_truncated: bool
    defects: tuple[str, ...] = ()
    body_head: bytes = b""
    # Why the From header names no single unambiguous mailbox (then sender_email is ""); None when it does.
    sender_problem: str | None = None
    # Every Authentication-Results header value (the first MAX_SENDER_HEADERS), topmost first.
    authentication_results: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextPart:
    """One text part fetched by the IMAP side: its headers' facts and its (possibly cut) still-encoded body."""

    content_type: str            # "text/plain" | "text/html"
    charset: str | None
    transfer_encoding: str | None
    body: bytes
    truncated: bool              # the server holds more than ``body``


@dataclass
class _Collector:
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    plain_bytes: int = 0
    html_bytes: int = 0
    plain_cut: bool = False
    html_cut: bool = False
    defects: list[str] = field(default_factory=list)
    first_charset: str | None = None

    def defect(self, name: str) -> None:
        if name not in self.defects:
            self.defects.append(name)


# --- public entry points ---------------------------------------------------------------------------------------

def parse_message(raw: bytes) -> ParsedEmail:
    """Parse a whole RFC 5322 message; never raises (garbage in gives an empty email with defects)."""
    try:
        return _parse_message(raw)
    except Exception as exc:  # the stdlib parser is robust, but "never raises" is this module's contract
        defect = f"unparseable:{type(exc).__name__}"
    # E.g. ~1000 nested multiparts exhaust the stdlib parser's recursion: keep the headers (parsed flat, no
    # recursion) and read the body as one text part, so the email keeps its identity and its links.
    try:
        email = _headers_and_flat_body(raw, defect)
        logger.warning("PARSE: message structure could not be parsed (%s); headers and a flat body kept",
                       defect.split(":", 1)[1])
        return email
    except Exception as exc:
        logger.warning("PARSE: message could not be parsed (%s); using an empty email", type(exc).__name__)
        return _empty_email(raw, defect)


def _headers_and_flat_body(raw: bytes, defect: str) -> ParsedEmail:
    match = re.search(rb"\r?\n\r?\n", raw)
    head, body = (raw[:match.end()], raw[match.end():]) if match else (raw, b"")
    headers = BytesHeaderParser(policy=compat32).parsebytes(head)
    collector = _Collector()
    collector.defect(defect)
    _add_text(collector, "text/plain", None, None, body, truncated=False)
    return _build(headers, collector, body[:BODY_HEAD_BYTES])


def parse_parts(header_bytes: bytes, parts: list[TextPart], *, body_head: bytes | None = None) -> ParsedEmail:
    """Build a ParsedEmail from a header block and the text parts fetched with a byte limit.

    ``body_head``: the first KiB of the message body (``BODY.PEEK[TEXT]<0.1024>``), used only for the email id when
    there is no Message-ID; when omitted, the first KiB of the first part's encoded body is used instead.
    """
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(header_bytes or b"")
        collector = _Collector()
        for part in parts:
            _add_text(collector, part.content_type.lower(), part.charset, part.transfer_encoding,
                      part.body, truncated=part.truncated)
        if body_head is None:
            body_head = parts[0].body[:BODY_HEAD_BYTES] if parts else b""
        return _build(headers, collector, body_head[:BODY_HEAD_BYTES])
    except Exception as exc:
        logger.warning("PARSE: fetched parts could not be parsed (%s); using an empty email", type(exc).__name__)
        return _empty_email(body_head or b"", f"unparseable:{type(exc).__name__}")


def encoded_fetch_limit(cap_bytes: int, transfer_encoding: str | None) -> int:
    """Encoded bytes to fetch from the server so that, decoded, a part can fill ``cap_bytes`` of UTF-8."""
    raw = cap_bytes * RAW_LIMIT_FACTOR
    cte = _normalise_cte(transfer_encoding)
    if cte == "base64":
        return raw * 4 // 3 + raw // 38 + 8   # 4 chars per 3 bytes + a CRLF per 76-char line
    if cte == "quoted-printable":
        return raw * 3 + raw // 25 + 8        # worst case: every byte as =XX, plus soft line breaks
    return raw


# --- whole messages --------------------------------------------------------------------------------------------

def _parse_message(raw: bytes) -> ParsedEmail:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TypeError("raw must be bytes")
    raw = _strip_leading_noise(bytes(raw))
    msg = message_from_bytes(raw, policy=compat32)
    collector = _Collector()
    for defect in msg.defects:
        collector.defect(type(defect).__name__)
    for count, part in enumerate(msg.walk()):
        if count >= _MAX_PARTS:
            collector.defect("too_many_parts")
            break
        for defect in part.defects if part is not msg else ():
            collector.defect(type(defect).__name__)
        _collect_text_part(collector, part)
    return _build(msg, collector, _body_head(raw))


def _strip_leading_noise(raw: bytes) -> bytes:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 BOM before the first header hides it from the parser
    if raw.startswith(b"From ") and b"\n" in raw[:1000]:
        raw = raw[raw.index(b"\n") + 1:]  # an mbox "From " separator line is not a header
    return raw


def _collect_text_part(collector: _Collector, part: Message) -> None:
    """Add one leaf part's text to ``collector`` when it is an inline text/plain or text/html body."""
    if part.is_multipart():
        return
    content_type = _content_type(part)
    if content_type not in ("text/plain", "text/html") or _is_attachment(part):
        return
    # The undecoded payload: get_payload() would already decode 8-bit bytes with 'replace' and lose them.
    # The bytes parser keeps them as surrogate escapes, so encoding gives the original bytes back.
    payload = part._payload  # type: ignore[attr-defined]  # compat32 Message has no public accessor for the raw str
    if not isinstance(payload, str):
        return
    body = payload.encode("ascii", "surrogateescape")
    _add_text(collector, content_type, _param(part, "charset"), part.get("content-transfer-encoding"),
              body, truncated=False)


def _body_head(raw: bytes) -> bytes:
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = raw.find(separator)
        if index != -1:
            return raw[index + len(separator):index + len(separator) + BODY_HEAD_BYTES]
    return b""


def _content_type(part: Message) -> str:
    value = str(part.get("content-type", "") or "")
    main = value.split(";", 1)[0].strip().lower()
    if not main:
        return part.get_default_type()
    if "/" not in main:
        return "application/octet-stream"
    return main


def _param(part: Message, name: str) -> str | None:
    try:
        value = part.get_param(name)
    except Exception:
        return None
    if isinstance(value, tuple):  # RFC 2231: (charset, language, value)
        value = value[2]
    if not isinstance(value, str):
        return None
    return value.strip().strip('"').strip() or None


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("content-disposition", "") or "").split(";", 1)[0].strip().lower()
    return disposition == "attachment"


# --- decoding ---------------------------------------------------------------------------------------------------

def _normalise_cte(value: object) -> str:
    if value is None:
        return ""
    # "quoted-printable;" and " Base64 " are seen in the wild.
    return str(value).split(";", 1)[0].strip().lower()


def _transfer_decode(body: bytes, cte: str, raw_limit: int, collector: _Collector) -> tuple[bytes, bool]:
    """Transfer-decode at most about ``raw_limit`` output bytes; returns (bytes, more_was_there)."""
    if cte == "base64":
        encoded_limit = raw_limit * 4 // 3 + raw_limit // 38 + 8
        chunk = body[:encoded_limit]
        more = len(body) > encoded_limit
        data = re.sub(rb"[^A-Za-z0-9+/]", b"", chunk)
        tail = len(data) % 4
        if more or tail == 1:
            data = data[: len(data) - tail]  # a cut (or junk) in the middle of a quantum
        elif tail:
            data += b"=" * (4 - tail)  # the body's last quantum, whose padding was stripped above
        try:
            decoded = binascii.a2b_base64(data)
        except (binascii.Error, ValueError):
            collector.defect("invalid_base64")
            decoded = b""
    elif cte == "quoted-printable":
        encoded_limit = raw_limit * 3 + raw_limit // 25 + 8
        chunk = body[:encoded_limit]
        more = len(body) > encoded_limit
        if more or chunk[-2:].startswith(b"="):
            chunk = re.sub(rb"=[0-9A-Fa-f]?$", b"", chunk)  # an escape cut in two
        decoded = quopri.decodestring(chunk)
    else:
        if cte not in ("", "7bit", "8bit", "binary", "8bits"):
            collector.defect(f"unknown_transfer_encoding:{cte[:40]}")
        decoded = body[:raw_limit + 1]
        more = len(body) > raw_limit + 1
    if len(decoded) > raw_limit:
        return decoded[:raw_limit], True
    return decoded, more


_CHARSET_ALIASES = {
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-8-e": "iso-8859-8",
    "x-mac-cyrillic": "mac_cyrillic",
    "x-mac-roman": "mac_roman",
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",   # mail labelled gb2312 routinely uses GBK/GB18030 characters
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "shift_jis": "cp932",  # likewise: Windows' superset is what is actually sent
    "iso-2022-jp": "iso2022_jp_ext",
    "windows-874": "cp874",
    "unicode-1-1-utf-7": "utf-7",
    "utf8": "utf-8",
}


# Python codecs that are no mail charset: declaring one must not make the parser run it (bz2/zlib would inflate a
# bomb, punycode is quadratic, the escape codecs turn text into lone surrogates). They count as unknown charsets.
_NOT_CHARSETS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape", "undefined", "charmap"})


def _codec_for(charset: str | None) -> str | None:
    if not charset:
        return None
    name = charset.strip().strip('"').lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None  # bytes-to-bytes codecs (bz2, zlib, base64, hex, uu, rot13 …) and the ones above
    return info.name


def decode_bytes(data: bytes, charset: str | None, *, cut: bool = False,
                 defects: list[str] | None = None) -> str:
    """Decode ``data``: declared charset, then UTF-8, then Windows-1252 with replacement; never raises.

    ``cut``: the data may end in the middle of a multi-byte character, which is then dropped.
    """
    codec = _codec_for(charset)
    if charset and codec is None and defects is not None:
        defects.append(f"unknown_charset:{charset.strip()[:40].lower()}")
    candidates = [c for c in (codec, "utf-8") if c]
    if codec is None and not charset:
        candidates = ["utf-8"]
    for name in dict.fromkeys(candidates):
        try:
            return codecs.getincrementaldecoder(name)("strict").decode(data, final=not cut)
        except (UnicodeDecodeError, LookupError, ValueError):
            continue
        except Exception:  # some codecs raise their own errors on garbage
            continue
    if defects is not None and charset and codec is not None:
        defects.append(f"mislabelled_charset:{codec}")
    return data.decode("cp1252", "replace")


def _add_text(collector: _Collector, content_type: str, charset: str | None, cte: object,
              body: bytes, *, truncated: bool) -> None:
    is_html = content_type == "text/html"
    if collector.first_charset is None and charset:
        collector.first_charset = charset
    cap = HTML_CAP_BYTES if is_html else TEXT_CAP_BYTES
    used = collector.html_bytes if is_html else collector.plain_bytes
    remaining = cap - used
    if remaining <= 0:
        _mark_cut(collector, is_html, log=True)
        return
    raw_limit = remaining * RAW_LIMIT_FACTOR + 4
    decoded, more = _transfer_decode(body, _normalise_cte(cte), raw_limit, collector)
    defects: list[str] = []
    text = decode_bytes(decoded, charset, cut=more or truncated, defects=defects)
    for defect in defects:
        collector.defect(defect)
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not is_html:
        text = text.replace("\r\n", "\n").rstrip()
    if is_html:
        text, cut = truncate_html(text, remaining)
    else:
        text, cut = _cut_text(text, remaining)
    size = len(text.encode("utf-8", "surrogatepass"))
    if is_html:
        collector.html.append(text)
        collector.html_bytes += size + 1
    else:
        collector.plain.append(text)
        collector.plain_bytes += size + 1
    if cut:
        _mark_cut(collector, is_html, log=False)
    elif more or truncated:
        _mark_cut(collector, is_html, log=True)


def _cut_text(text: str, limit: int) -> tuple[str, bool]:
    if len(text) * 4 <= limit:
        return text, False
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text, False
    cut = codecs.getincrementaldecoder("utf-8")("surrogatepass").decode(encoded[:limit], final=False)
    logger.warning(TEXT_TRUNCATED_WARNING)
    return cut, True


def _mark_cut(collector: _Collector, is_html: bool, *, log: bool) -> None:
    if is_html:
        if log and not collector.html_cut:
            warn_html_truncated()
        collector.html_cut = True
    else:
        if log and not collector.plain_cut:
            logger.warning(TEXT_TRUNCATED_WARNING)
        collector.plain_cut = True


# --- headers ----------------------------------------------------------------------------------------------------

_FOLD = re.compile(r"\r?\n[ \t]?")
_WS = re.compile(r"\s+")
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")


class _Headers:
    """The few headers we read, as written (first occurrence, unfolded), 8-bit bytes decoded sensibly; of From and
    Authentication-Results every occurrence, in order (a sender is read only from exactly one From header).

    Raw 8-bit bytes in headers (not RFC 2047) are decoded as UTF-8, else in the charset of the message's first
    text part (clients that do this use their body charset), else Windows-1252.
    """

    _WANTED = ("message-id", "subject", "date", "from")
    _EVERY = ("from", "authentication-results")

    def __init__(self, msg: Message, hint_charset: str | None) -> None:
        self._values: dict[str, str] = {}
        self._every: dict[str, list[str]] = {key: [] for key in self._EVERY}
        try:
            items = msg.raw_items()  # compat32 keeps 8-bit bytes as surrogate escapes; str(Header) would lose them
            for name, value in items:
                key = str(name).strip().lower()
                if not isinstance(value, str):
                    continue
                if key in self._WANTED and key not in self._values:
                    self._values[key] = self._clean(value, hint_charset)
                if key in self._every and len(self._every[key]) < MAX_SENDER_HEADERS:
                    self._every[key].append(self._clean(value, hint_charset))
        except Exception:  # a header the parser mangled beyond use is simply absent
            pass

    @staticmethod
    def _clean(value: str, hint_charset: str | None) -> str:
        value = value[:MAX_RAW_HEADER_CHARS]
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            data = value.encode("ascii", "surrogateescape")
            try:
                value = data.decode("utf-8")
            except UnicodeDecodeError:
                codec = _codec_for(hint_charset)
                try:
                    value = data.decode(codec) if codec and codec != "utf-8" else data.decode("cp1252", "replace")
                except (UnicodeDecodeError, LookupError, ValueError):
                    value = data.decode("cp1252", "replace")
        return _FOLD.sub(" ", value).strip()

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def every(self, name: str) -> tuple[str, ...]:
        return tuple(self._every[name])


def decode_header_value(value: str) -> str:
    """RFC 2047 encoded-words decoded (unknown charsets fall back like bodies), whitespace collapsed."""
    if "=?" not in value:
        return _WS.sub(" ", value).strip()
    try:
        chunks = decode_header(value)
    except Exception:
        return _WS.sub(" ", value).strip()
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            if charset is None:
                out.append(chunk.decode("ascii", "replace"))
            else:
                out.append(decode_bytes(chunk, charset))
        else:
            out.append(chunk)
    return _WS.sub(" ", "".join(out)).strip()


def _decoded_header(headers: _Headers, name: str) -> str:
    raw = headers.get(name)
    if raw is None:
        return ""
    return decode_header_value(raw)[:MAX_HEADER_CHARS]


def _from_header(headers: _Headers) -> tuple[str, str, str | None]:
    """(decoded ``Name <addr>``, bare lower-case address or "", why there is no address or None).

    The address comes only from ``sender.parse_from`` (strict, the runtime's email.utils is never asked). The display
    keeps the form every earlier release wrote for one clear mailbox, since it feeds the identity fingerprint; for any
    other From header it is the (first) header as written, decoded."""
    mailbox = parse_from(headers.every("from"), max_chars=MAX_HEADER_CHARS)
    if mailbox.problem is not None:
        raw = headers.get("from")
        return (decode_header_value(raw[:MAX_HEADER_CHARS]) if raw else ""), "", mailbox.problem
    name = decode_header_value(mailbox.name).strip().strip('"').strip()
    display = f"{name} <{mailbox.address}>" if name else mailbox.address
    return display, mailbox.address.lower(), None


def _message_id(headers: _Headers) -> str | None:
    raw = headers.get("message-id")
    if not raw:
        return None
    match = _MESSAGE_ID.search(raw)
    value = match.group(1) if match else raw.strip().strip("<>").strip()
    return value[:MAX_HEADER_CHARS] or None


def _build(msg: Message, collector: _Collector, body_head: bytes) -> ParsedEmail:
    headers = _Headers(msg, collector.first_charset)
    from_header, sender_email, sender_problem = _from_header(headers)
    date_header = headers.get("date")
    return ParsedEmail(
        message_id=_message_id(headers),
        subject=_decoded_header(headers, "subject"),
        date_header=date_header[:MAX_HEADER_CHARS] if date_header else None,
        from_header=from_header,
        sender_email=sender_email,
        text_plain="\n\n".join(t for t in collector.plain if t.strip()),
        html="\n".join(collector.html),
        html_truncated=collector.html_cut,
        text_truncated=collector.plain_cut,
        defects=tuple(collector.defects),
        body_head=body_head,
        sender_problem=sender_problem,
        authentication_results=headers.every("authentication-results"),
    )


def _empty_email(raw: bytes, defect: str) -> ParsedEmail:
    return ParsedEmail(message_id=None, subject="", date_header=None, from_header="", sender_email="",
                       text_plain="", html="", html_truncated=False, text_truncated=False,
                       defects=(defect,), sender_problem="the headers could not be read",
                       body_head=bytes(raw[:BODY_HEAD_BYTES]) if isinstance(raw, (bytes, bytearray)) else b"")
