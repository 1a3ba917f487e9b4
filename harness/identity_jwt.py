"""JSON Web Tokens as the fake identity provider (harness/identity.py) reads them: client assertions (RFC 7523
section 2.2, Microsoft certificate credentials) are only parsed, Google service-account grants (RFC 7523 section
2.1, RS256) are verified with the public half of a key this module generates and writes as a Google-format
service-account key file."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# Google accepts assertions valid for at most an hour (https://developers.google.com/identity/protocols/oauth2/
# service-account#authorizingrequests) and tolerates a little clock skew.
MAX_ASSERTION_SECONDS = 3600
CLOCK_SKEW_SECONDS = 60


class JwtError(ValueError):
    """A JWT that is malformed, badly signed or outside its validity; the message is the provider's description."""


@dataclass(frozen=True)
class ParsedJwt:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JwtError("Invalid JWT: not base64url") from exc


def b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_jwt(token: str) -> ParsedJwt:
    """Split and decode a compact JWS; check only its shape (three segments, JSON objects, an ``alg``)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise JwtError("Invalid JWT: expected three segments")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise JwtError("Invalid JWT: segments are not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict) or not header.get("alg"):
        raise JwtError("Invalid JWT: header or claims are not objects, or no alg")
    return ParsedJwt(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), _b64decode(parts[2]))


def check_times(claims: dict[str, Any], now: float, max_seconds: int = MAX_ASSERTION_SECONDS) -> None:
    """``iat`` not in the future, ``exp`` not past, and no longer than ``max_seconds`` apart."""
    try:
        issued, expires = float(claims["iat"]), float(claims["exp"])
    except (KeyError, TypeError, ValueError) as exc:
        raise JwtError("Invalid JWT: iat and exp are required numbers") from exc
    if issued > now + CLOCK_SKEW_SECONDS or expires < now - CLOCK_SKEW_SECONDS or expires - issued > max_seconds:
        raise JwtError("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                       "Check your iat and exp values in the JWT claim.")


class ServiceAccountKey:
    """An RSA key pair standing for one Google service account; ``file_content`` is its key file."""

    def __init__(self, client_email: str, project_id: str = "render-signal-test") -> None:
        self.client_email = client_email
        self.project_id = project_id
        self.private_key_id = secrets.token_hex(20)
        self.client_id = str(100000000000000000000 + secrets.randbelow(10**20))
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self._private_key.public_key()

    def file_content(self, token_uri: str, base_url: str) -> dict[str, str]:
        """The JSON Google's console downloads, every URL pointing at the fake (``base_url``), not at Google."""
        pem = self._private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode("ascii")
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": f"{base_url}/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": f"{base_url}/oauth2/v1/certs",
            "client_x509_cert_url": f"{base_url}/robot/v1/metadata/x509/{self.client_email}",
            "universe_domain": "googleapis.com",
        }

    def sign(self, claims: dict[str, Any]) -> str:
        """An RS256 JWT of ``claims`` with this key (what google-auth sends), for tests of the fake itself."""
        header = {"alg": "RS256", "typ": "JWT", "kid": self.private_key_id}
        signing_input = f"{b64encode(json.dumps(header).encode())}.{b64encode(json.dumps(claims).encode())}"
        signature = self._private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64encode(signature)}"

    def verify(self, jwt: ParsedJwt) -> None:
        if jwt.header.get("alg") != "RS256":
            raise JwtError("Invalid JWT: alg must be RS256")
        try:
            self.public_key.verify(jwt.signature, jwt.signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise JwtError("Invalid JWT Signature.") from exc


def assertion_claims_for(key: ServiceAccountKey, audience: str, scope: str, subject: str | None = None,
                         lifetime: int = 3600) -> dict[str, Any]:
    """The claim set google-auth builds for a service account (``sub`` for domain-wide delegation)."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": key.client_email, "aud": audience, "scope": scope, "iat": now,
                              "exp": now + lifetime}
    if subject:
        claims["sub"] = subject
    return claims
