"""Who sent an email, as far as the service can tell: the From header read strictly, and the receiving server's
word on it (Authentication-Results) for a mailbox that asks for it.

``parse_from`` reads the From field by RFC 5322 in this module's own code, never with ``email.utils``: on the
3.11.7 that CI runs, ``email.utils`` reads ``boss@trusted.example <attacker@evil.example>`` as
``boss@trusted.example`` (CVE-2023-27043, fixed in 3.11.10). A sender is found only in exactly one From field naming
exactly one mailbox, with nothing another parser could read another way; anything else gets a ``problem``. Stricter
than the RFC on purpose (no legitimate sender needs these, and parsers disagree on them): no obsolete syntax
(comments or spaces inside the address), no quoted local part, no domain literal, no encoded-word in the address
(RFC 2047 section 5 forbids it; decoders that decode it anyway read another address).

``authenticate_sender`` reads Authentication-Results (RFC 8601) headers. The trusted one is the topmost header with
the configured authserv-id (the receiving server adds its header above everything the sender wrote), or the topmost
header of all (``SenderAuth.TOPMOST``: Microsoft 365 writes no authserv-id). It vouches for the From domain when it
says ``dmarc=pass`` with ``header.from`` that domain, or ``dkim=pass`` with a ``header.d`` aligned to it (relaxed:
the same organizational domain by the Public Suffix List bundled in ``publicsuffixlist``, imported on first use and
never updated from the network). Pure: no I/O beyond reading that bundled list once.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from config import SenderAuth

__all__ = [
    "AuthResult", "AuthVerdict", "AuthenticationResults", "FromMailbox", "authenticate_sender", "domains_aligned",
    "organizational_domain", "parse_authentication_results", "parse_from",
]

# --- the From header ----------------------------------------------------------------------------------------------

_ATEXT_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~.")
_SPECIALS = frozenset("<>@,;:[]\\)")
_DOMAIN_LABEL = re.compile(r"[^\W_]+(?:-+[^\W_]+)*")


@dataclass(frozen=True)
class FromMailbox:
    """The one mailbox of a From header: its display name as written (comments folded in the way every earlier
    release showed them; encoded-words not decoded yet) and its address as written, or why there is none."""

    name: str = ""
    address: str = ""
    problem: str | None = None


@dataclass(frozen=True)
class _Token:
    kind: str  # "atom" (dots included), "quoted", "comment", "space", or the special character itself
    text: str


class _Refused(Exception):
    """The header cannot be read as one mailbox; the message is the ``problem``."""


def parse_from(values: Sequence[str], *, max_chars: int = 16_384) -> FromMailbox:
    """The single mailbox of the From field(s) ``values`` (unfolded, in header order), or a ``problem``."""
    try:
        if not values:
            raise _Refused("no From header")
        if len(values) > 1:
            raise _Refused(f"{len(values)} From headers")
        if len(values[0]) > max_chars:
            raise _Refused(f"a From header longer than {max_chars} characters")
        return _mailbox(_scan(values[0]))
    except _Refused as refused:
        return FromMailbox(problem=str(refused))


def _scan(value: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if _is_space(ch):
            end = _run_end(value, i, _is_space)
            tokens.append(_Token("space", value[i:end]))
        elif ch == '"':
            text, end = _quoted(value, i)
            tokens.append(_Token("quoted", text))
        elif ch == "(":
            text, end = _comment(value, i)
            tokens.append(_Token("comment", text))
        elif ch in _SPECIALS:
            tokens.append(_Token(ch, ch))
            end = i + 1
        elif _is_atext(ch):
            end = _run_end(value, i, _is_atext)
            tokens.append(_Token("atom", value[i:end]))
        else:
            raise _Refused("a control character")
        i = end
    return tokens


def _is_space(ch: str) -> bool:
    return ch in " \t" or (ch > "\x7f" and ch.isspace())  # a no-break space in a name is a space


def _is_atext(ch: str) -> bool:
    # RFC 6532 lets UTF-8 stand wherever ASCII atext may; control characters never do.
    return ch in _ATEXT_ASCII or (ch > "\x7f" and not ch.isspace() and unicodedata.category(ch) != "Cc")


def _run_end(value: str, start: int, inside: Callable[[str], bool]) -> int:
    end = start
    while end < len(value) and inside(value[end]):
        end += 1
    return end


def _quoted(value: str, start: int) -> tuple[str, int]:
    out: list[str] = []
    i = start + 1
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise _Refused("an unclosed quoted string")


def _comment(value: str, start: int) -> tuple[str, int]:
    # Nested comments are flattened into their parent's text, as every earlier release showed them.
    out: list[str] = []
    depth = 0
    i = start
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return "".join(out), i + 1
        else:
            out.append(ch)
        i += 1
    raise _Refused("an unclosed comment")


def _mailbox(tokens: list[_Token]) -> FromMailbox:
    kinds = {token.kind for token in tokens}
    if "," in kinds:
        raise _Refused("more than one mailbox")
    if ":" in kinds or ";" in kinds:
        raise _Refused("group syntax")
    if "[" in kinds or "]" in kinds:
        raise _Refused("a domain literal")
    if "\\" in kinds or ")" in kinds:
        raise _Refused("a stray \\ or )")
    if "<" in kinds or ">" in kinds:
        return _name_addr(tokens)
    return _bare_addr_spec(tokens)


def _name_addr(tokens: list[_Token]) -> FromMailbox:
    kinds = [token.kind for token in tokens]
    if kinds.count("<") != 1 or kinds.count(">") != 1 or kinds.index("<") > kinds.index(">"):
        raise _Refused("unbalanced or repeated <...>")
    opening, closing = kinds.index("<"), kinds.index(">")
    before, inside, after = tokens[:opening], tokens[opening + 1:closing], tokens[closing + 1:]
    if any(token.kind not in ("atom", "quoted", "space", "comment") for token in before):
        raise _Refused("an address outside <...>")
    if any(token.kind not in ("space", "comment") for token in after):
        raise _Refused("text after <...>")
    inside = _strip(inside, ("space",))
    if not inside:
        raise _Refused("an empty <>")
    address = _addr_spec(inside)
    words = [token.text for token in before if token.kind in ("atom", "quoted")]
    comments = [token.text for token in before if token.kind == "comment"]
    # Comments before <...> are shown after the name and comments after it are dropped, as every earlier release did.
    name = " ".join(words) + (" (" + " ".join(comments) + ")" if comments else "")
    return FromMailbox(name=name, address=address)


def _bare_addr_spec(tokens: list[_Token]) -> FromMailbox:
    address = _addr_spec(_strip(tokens, ("space", "comment")))
    comments = [token.text for token in tokens if token.kind == "comment"]
    return FromMailbox(name=" ".join(comments), address=address)


def _strip(tokens: list[_Token], kinds: tuple[str, ...]) -> list[_Token]:
    start, end = 0, len(tokens)
    while start < end and tokens[start].kind in kinds:
        start += 1
    while end > start and tokens[end - 1].kind in kinds:
        end -= 1
    return tokens[start:end]


def _addr_spec(tokens: list[_Token]) -> str:
    kinds = [token.kind for token in tokens]
    if "@" not in kinds:
        raise _Refused("no address")
    if kinds.count("@") > 1:
        raise _Refused("more than one @")
    if "comment" in kinds:
        raise _Refused("a comment inside the address")
    if "space" in kinds:
        raise _Refused("a space inside the address")
    if "quoted" in kinds:
        raise _Refused("a quoted local part")
    if kinds != ["atom", "@", "atom"]:
        raise _Refused("no address")
    local, domain = tokens[0].text, tokens[2].text
    if "=?" in local or "=?" in domain:
        raise _Refused("an encoded-word in the address")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise _Refused("a malformed local part")
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in domain.split(".")):
        raise _Refused("a malformed domain")
    return f"{local}@{domain}"


# --- Authentication-Results (RFC 8601) ------------------------------------------------------------------------------

@dataclass(frozen=True)
class AuthResult:
    """One ``method=result`` of a header, with its properties (``header.d``, ``header.from``, ``reason`` ...)."""

    method: str                               # lower case: "dkim", "dmarc", "spf" ...
    result: str                               # lower case: "pass", "fail" ...
    # (lower-case name, value), in order; the value of a ``ptype.property`` (``header.d``) lower-cased, since those
    # name domains and addresses, any other (``reason``) as written
    properties: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        """The first value of property ``name``, or None."""
        for key, value in self.properties:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class AuthenticationResults:
    authserv_id: str | None  # lower case; None when the header has none (Microsoft 365)
    results: tuple[AuthResult, ...]


@dataclass(frozen=True)
class AuthVerdict:
    authenticated: bool
    why: str  # for the operator's log line; never carries the sender's address


_WORD_END = frozenset(' \t\r\n;=()"')
_KEYWORD = re.compile(r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?")


def parse_authentication_results(value: str) -> AuthenticationResults | None:
    """The header's authserv-id and results, or None when it is malformed (a malformed header vouches for nobody).
    A segment that is no ``method=result`` (nor ``none``) is passed over."""
    try:
        segments = _ar_segments(value)
    except _Refused:
        return None
    first = segments[0]
    authserv_id: str | None = None
    if all(kind != "=" for kind, _ in first):  # authserv-id [version]; Microsoft 365 starts with a result instead
        if len(first) > 2 or (len(first) == 2 and not first[1][1].isdigit()):
            return None
        authserv_id = first[0][1].lower()
        segments = segments[1:]
    results = (_resinfo(segment) for segment in segments)
    return AuthenticationResults(authserv_id, tuple(result for result in results if result is not None))


def _ar_segments(value: str) -> list[list[tuple[str, str]]]:
    """Tokens ("word" | "quoted" | "=", text) per ``;``-separated segment; comments dropped."""
    segments: list[list[tuple[str, str]]] = [[]]
    i = 0
    while i < len(value):
        ch = value[i]
        if ch in " \t\r\n":
            i += 1
        elif ch == ";":
            segments.append([])
            i += 1
        elif ch == "=":
            segments[-1].append(("=", "="))
            i += 1
        elif ch == "(":
            i = _comment(value, i)[1]
        elif ch == '"':
            text, i = _quoted(value, i)
            segments[-1].append(("quoted", text))
        elif ch == ")":
            raise _Refused("a stray )")
        else:
            end = _run_end(value, i, lambda c: c not in _WORD_END)
            segments[-1].append(("word", value[i:end]))
            i = end
    if not segments[0]:
        raise _Refused("no authserv-id")
    return segments


def _resinfo(segment: list[tuple[str, str]]) -> AuthResult | None:
    if len(segment) < 3 or segment[0][0] != "word" or segment[1][0] != "=" or segment[2][0] != "word":
        return None
    method = segment[0][1].lower().split("/", 1)[0]  # "dkim/1": a method version
    result = segment[2][1].lower()
    if not _KEYWORD.fullmatch(method) or not _KEYWORD.fullmatch(result):
        return None
    properties = []
    i = 3
    while i < len(segment):
        if i + 2 < len(segment) and segment[i][0] == "word" and segment[i + 1][0] == "=" \
                and segment[i + 2][0] in ("word", "quoted"):
            name, value = segment[i][1].lower(), segment[i + 2][1]
            properties.append((name, value.lower() if "." in name else value))  # ptype.property values are domains
            i += 3
        else:
            i += 1
    return AuthResult(method, result, tuple(properties))


def _trusted_header(values: Sequence[str], auth: SenderAuth) -> AuthenticationResults | None:
    if auth.topmost:
        return parse_authentication_results(values[0]) if values else None
    for value in values:
        header = parse_authentication_results(value)
        if header is not None and header.authserv_id == auth.authserv_id.lower():
            return header
    return None


def authenticate_sender(address: str, header_values: Sequence[str], auth: SenderAuth) -> AuthVerdict:
    """Does the trusted Authentication-Results header (``header_values``: every one, topmost first) vouch for the
    domain of ``address``?"""
    header = _trusted_header(header_values, auth)
    if header is None:
        source = "" if auth.topmost else f" from {auth.authserv_id}"
        return AuthVerdict(False, f"no Authentication-Results header{source}")
    domain = _normalise_domain(address.rsplit("@", 1)[-1])
    if domain is None:
        return AuthVerdict(False, "the From domain is not a domain name")
    for result in header.results:
        if result.result != "pass":
            continue
        if result.method == "dmarc" and _normalise_domain(_domain_of(result.get("header.from"))) == domain:
            return AuthVerdict(True, f"dmarc=pass for {domain}")
        signer = _normalise_domain(_domain_of(result.get("header.d")))
        if result.method == "dkim" and signer is not None and domains_aligned(signer, domain):
            return AuthVerdict(True, f"dkim=pass by {signer}, aligned with {domain}")
    return AuthVerdict(False, f"no dmarc=pass for {domain} and no dkim=pass aligned with it")


def _domain_of(value: str | None) -> str:
    # header.from / header.d name a domain; a few writers put an address there
    return (value or "").rsplit("@", 1)[-1]


def _normalise_domain(domain: str) -> str | None:
    """Lower-case A-labels without a trailing dot, or None when it is not a domain name."""
    domain = domain.strip().rstrip(".").lower()
    if not domain or ".." in domain:
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in ascii_domain.split(".")):
        return None
    return ascii_domain


def organizational_domain(domain: str) -> str | None:
    """The registrable domain of ``domain`` by the Public Suffix List (private suffixes included: two github.io sites
    are two organisations), or None for a public suffix itself or a name that is not a domain."""
    normalised = _normalise_domain(domain)
    if normalised is None:
        return None
    found = _public_suffix_list().privatesuffix(normalised)
    return found if isinstance(found, str) else None


def domains_aligned(signer: str, from_domain: str) -> bool:
    """DMARC relaxed alignment: the same organizational domain."""
    first, second = organizational_domain(signer), organizational_domain(from_domain)
    return first is not None and first == second


@functools.lru_cache(maxsize=1)
def _public_suffix_list() -> Any:
    # Imported here, not at the top: only a mailbox that authenticates its senders pays for loading the list.
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()  # the list bundled with the package; it never fetches one
