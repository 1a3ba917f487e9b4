"""``flask --app app process-email PATH.eml [--dry-run]``: run one saved email through the pipeline.

Dry run: parse, decide and print the webhook payload as JSON on stdout (always, skipped emails too, with their
links even when the sender filter skips them) and the decision on stderr (``decision: send`` / ``decision: skip
reason=<reason>``); no R2, no webhook, no mailbox. Exit 0. Exit 2 with one line on stderr only when the file cannot
be read or is larger than ``MAX_EML_BYTES`` (64 MiB). Without
``--dry-run`` the wired service (``current_app.extensions["render_signal"]``: ``ingest_saved(parsed, received_at)``
and ``deliver_now(ingested) -> dict``, background/ingest.py) records the email as the poller would (mailbox
``default``), offloads the links and makes the first delivery attempt; its outcome is printed on stderr.
A saved file has no IMAP INTERNALDATE, so ``received_at`` comes from its Date header (now, when that is invalid).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from config import DEFAULT_ID, SenderAuth
from email_processing.orchestrator import NullOffloader, ProcessResult, process_email
from email_processing.parsing import parse_message
from email_processing.payload import received_at_from_date_header

MAX_EML_BYTES = 64 * 1024 * 1024
EXTENSION_KEY = "render_signal"
EXIT_UNREADABLE = 2
EXIT_CONFIG = 3
EXIT_DELIVERY_FAILED = 1


def _fail(code: int, message: str) -> None:
    # One line, always: messages may carry an OS error text with a newline in odd cases.
    click.echo(" ".join(message.split()), err=True)
    raise SystemExit(code)


def _read_eml(path: str) -> bytes:
    try:
        size = os.stat(path).st_size
        if size > MAX_EML_BYTES:
            _fail(EXIT_UNREADABLE, f"process-email: {path}: file too large ({size} bytes > {MAX_EML_BYTES})")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_EML_BYTES + 1)
    except OSError as exc:
        _fail(EXIT_UNREADABLE, f"process-email: {path}: cannot read file ({exc.strerror or type(exc).__name__})")
    if len(raw) > MAX_EML_BYTES:  # grew between stat and read
        _fail(EXIT_UNREADABLE, f"process-email: {path}: file too large (> {MAX_EML_BYTES} bytes)")
    return raw


def _flask_app() -> Any | None:
    """The Flask app this command runs under, or None (plain click, tests without an app)."""
    try:
        from flask import current_app, has_app_context
        from flask.cli import ScriptInfo
    except ImportError:  # pragma: no cover - Flask is a runtime dependency
        return None
    if has_app_context():
        return current_app._get_current_object()  # type: ignore[attr-defined]  # a LocalProxy method
    # Registered with app.cli.add_command and invoked through AppGroup: no context pushed yet; load the app.
    info = click.get_current_context().find_object(ScriptInfo)
    if info is None:
        return None
    try:
        return info.load_app()
    except Exception:
        return None


def _settings(service: Any | None) -> Any:
    if service is not None:
        return service.settings
    from settings import ConfigError, Settings

    try:
        return Settings.from_env()
    except ConfigError as exc:
        _fail(EXIT_CONFIG, str(exc))


def _print_payload(result: ProcessResult) -> None:
    text = json.dumps(result.payload, ensure_ascii=False, indent=2)
    # Bytes, so a non-UTF-8 terminal locale cannot turn a subject into an encoding error.
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        click.echo(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8", "surrogatepass") + b"\n")
    buffer.flush()


def _decision_line(result: ProcessResult) -> str:
    return "decision: send" if result.decision == "send" else f"decision: skip reason={result.reason}"


@click.command("process-email")
@click.argument("path")
@click.option("--dry-run", is_flag=True, help="Print the payload and the decision; no R2, no webhook.")
def process_email_command(path: str, dry_run: bool) -> None:
    """Parse a saved email (.eml) and run it through the pipeline (or only print the payload with --dry-run)."""
    raw = _read_eml(path)
    app = _flask_app()
    if app is None:
        _run(raw, dry_run, None)
        return
    with app.app_context():
        _run(raw, dry_run, app.extensions.get(EXTENSION_KEY))


def dry_run_result(raw: bytes, *, sender_allowlist: tuple[str, ...], allow_without_links: bool, max_links: int,
                   sender_auth: SenderAuth | None, mailbox_id: str = DEFAULT_ID) -> ProcessResult:
    """The dry run of one saved email: parse, decide and build the payload (links listed even when the sender filter
    skips it); no R2, no webhook, no mailbox, no state. Also the operator API's ``POST /api/try-email``."""
    parsed = parse_message(raw)
    received_at = received_at_from_date_header(parsed.date_header)
    return process_email(parsed, received_at=received_at, sender_allowlist=sender_allowlist,
                         allow_without_links=allow_without_links, offloader=NullOffloader(),
                         extract_when_skipped=True, max_links=max_links, sender_auth=sender_auth,
                         mailbox_id=mailbox_id)


def _run(raw: bytes, dry_run: bool, service: Any | None) -> None:
    if not dry_run and service is None:
        _fail(EXIT_DELIVERY_FAILED, "process-email: the service is not wired here; run it as "
                                    "`flask --app app process-email PATH` or use --dry-run")
    if dry_run or service is None:
        settings = _settings(service)
        result = dry_run_result(raw, sender_allowlist=settings.sender_allowlist,
                                allow_without_links=settings.allow_webhook_without_links,
                                max_links=settings.max_links_per_email, sender_auth=SenderAuth.from_settings(settings))
        _print_payload(result)
        click.echo(_decision_line(result), err=True)
        return
    parsed = parse_message(raw)
    received_at = received_at_from_date_header(parsed.date_header)
    try:
        ingested = service.ingest_saved(parsed, received_at)
    except Exception as exc:
        _fail(EXIT_DELIVERY_FAILED, f"process-email: could not queue the email ({type(exc).__name__})")
    if ingested.result is None:  # not expected: a saved email is never parked (ingest raises instead)
        _fail(EXIT_DELIVERY_FAILED, "process-email: the email could not be processed")
    _print_payload(ingested.result)
    click.echo(_decision_line(ingested.result), err=True)
    if ingested.result.decision != "send":
        return
    try:
        outcome = service.deliver_now(ingested)
    except Exception as exc:
        _fail(EXIT_DELIVERY_FAILED, f"process-email: delivery failed ({type(exc).__name__})")
    click.echo("delivery: " + json.dumps(outcome, default=str, sort_keys=True), err=True)


def main() -> None:  # pragma: no cover - convenience: python -m email_processing.cli PATH --dry-run
    process_email_command.main(args=sys.argv[1:], prog_name="process-email")


if __name__ == "__main__":  # pragma: no cover
    main()
