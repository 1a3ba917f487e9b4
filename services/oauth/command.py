"""Access tokens printed by an operator's command (a vault, a token broker): the command line is split as a shell
would (``shlex``) but run without one, with no standard input, bounded by a timeout (default 10 s).

Its standard output is a bare access token, or a JSON object ``{"access_token": ..., "expires_in": ...}``; a JSON
``{"error": ..., "error_description": ...}`` is judged as a token endpoint's answer (``invalid_grant`` terminal…).
Its standard error may hold secrets: only its length is logged. How failures are judged:

- timeout (``command_timeout``), or a non-zero exit (``command_failed``): transient, a broker that is down or slow
  comes back by itself;
- exit status 77 (``EX_NOPERM`` of sysexits.h), the way a command says "refused, sign in again"
  (``command_refused``): terminal;
- a command that cannot be started (``command_not_found``) or whose output is neither form
  (``command_bad_output``): terminal, the configuration must be fixed.

A bare token's lifetime is unknown: it is taken as ``bare_token_lifetime_seconds`` (default 300), so the command
runs again about every four and a half minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Mapping

from services.oauth.errors import OAuthError, from_error_body, transient
from services.oauth.tokens import AccessToken, CacheKey, is_bearer_token

logger = logging.getLogger(__name__)

PROVIDER = "command"
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_BARE_TOKEN_LIFETIME_SECONDS = 300.0
EXIT_REFUSED = 77  # sysexits.h EX_NOPERM
MAX_OUTPUT_BYTES = 64 * 1024


@dataclass(frozen=True)
class CommandConfig:
    """``subject``: the mailbox the token is for (part of the cache key; also in ``OAUTH_SUBJECT`` for the command)."""

    command: str
    subject: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    bare_token_lifetime_seconds: float = DEFAULT_BARE_TOKEN_LIFETIME_SECONDS

    def __post_init__(self) -> None:
        if not shlex.split(self.command or ""):
            raise ValueError("token_command is empty")
        if self.timeout_seconds <= 0:
            raise ValueError("token_command_timeout_seconds must be positive")

    def __repr__(self) -> str:
        # The command line may carry a vault path or an option worth keeping out of logs: show a fingerprint.
        return f"CommandConfig(command=<{self.fingerprint}>, subject={self.subject!r})"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.command.encode("utf-8")).hexdigest()[:12]


class CommandTokenProvider:
    """Runs ``config.command`` for every token."""

    def __init__(self, config: CommandConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._environ = dict(os.environ if environ is None else environ)

    @property
    def cache_key(self) -> CacheKey:
        return CacheKey(PROVIDER, None, self.config.fingerprint, None, self.config.subject)

    def fetch_token(self) -> AccessToken:
        argv = shlex.split(self.config.command)
        env = dict(self._environ)
        if self.config.subject:
            env["OAUTH_SUBJECT"] = self.config.subject
        now = time.time()
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                                  timeout=self.config.timeout_seconds, check=False)
        except subprocess.TimeoutExpired:
            logger.warning("OAUTH: token command timed out command=%s after=%.1fs", self.config.fingerprint,
                           self.config.timeout_seconds)
            raise transient("command_timeout", f"the token command did not finish within "
                                               f"{self.config.timeout_seconds:g} s") from None
        except OSError as exc:
            raise OAuthError("command_not_found", f"cannot run the token command ({exc.strerror})", True) from None
        if done.returncode != 0:
            logger.warning("OAUTH: token command failed command=%s exit=%d stderr_bytes=%d", self.config.fingerprint,
                           done.returncode, len(done.stderr))
            if done.returncode == EXIT_REFUSED:
                raise OAuthError("command_refused", f"the token command refused (exit {EXIT_REFUSED})", True)
            raise transient("command_failed", f"the token command exited with status {done.returncode}")
        return self._parse(done.stdout, now)

    def _parse(self, stdout: bytes, now: float) -> AccessToken:
        text = stdout[:MAX_OUTPUT_BYTES].decode("utf-8", "replace").strip()
        if text.startswith("{"):
            return self._parse_json(text, now)
        if is_bearer_token(text):
            return AccessToken(text, now + self.config.bare_token_lifetime_seconds, now)
        raise self._bad_output("neither a bare access token nor a JSON object")

    def _parse_json(self, text: str, now: float) -> AccessToken:
        try:
            answer: Any = json.loads(text)
        except ValueError:
            raise self._bad_output("not valid JSON") from None
        if not isinstance(answer, dict):
            raise self._bad_output("not a JSON object")
        if answer.get("error"):
            raise from_error_body(answer)
        value = answer.get("access_token")
        if not isinstance(value, str) or not is_bearer_token(value):
            raise self._bad_output("no usable access_token")
        expires_in = answer.get("expires_in", self.config.bare_token_lifetime_seconds)
        try:
            lifetime = float(expires_in)
        except (TypeError, ValueError):
            raise self._bad_output("expires_in is not a number") from None
        if lifetime <= 0:
            raise self._bad_output("expires_in is not positive")
        return AccessToken(value, now + lifetime, now)

    def _bad_output(self, why: str) -> OAuthError:
        logger.warning("OAUTH: token command printed no token command=%s (%s)", self.config.fingerprint, why)
        return OAuthError("command_bad_output", f"the token command's output is {why}", True)
