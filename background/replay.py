"""``flask --app app replay-dead-letters [--id EVENT_ID | --all]``: move dead letters back to pending.
``flask --app app replay-parked [--id PARKED_ID | --all]``: ask for parked emails to be re-read and re-run.

Both only write the state store: the dead letters' attempt count is reset (same ``webhook-id``) and the running lease
holder's delivery loop sends them; a parked email gets a durable replay request that the mailbox's lease holder
carries out (re-read by UID, else by Message-ID, then the whole pipeline), or refuses with a reason when the email is
gone. So neither command can race the service. An unknown id exits 1.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import click
from flask import current_app
from flask.cli import with_appcontext


def _replay(one: str | None, every: bool, what: str, option: str, request: Callable[[Any, str | None], int],
            done: str) -> None:
    """Exactly one of ``--id`` / ``--all``; ``request(store, id or None)`` returns how many it took."""
    if bool(one) == bool(every):
        click.echo(f"error: give exactly one of --id {option} or --all", err=True)
        sys.exit(2)
    from services.state_store import StateStoreError

    runtime = current_app.extensions["render_signal"]
    try:
        count = request(runtime.store, one if one else None)
    except StateStoreError as exc:
        click.echo(f"error: state store unavailable ({exc})", err=True)
        sys.exit(1)
    if one and count == 0:
        click.echo(f"error: no {what} with id {one}", err=True)
        sys.exit(1)
    click.echo(done.format(count=count))


@click.command("replay-dead-letters")
@click.option("--id", "event_id", help="The event id (webhook-id) of one dead letter.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@with_appcontext
def replay_dead_letters_command(event_id: str | None, replay_all: bool) -> None:
    """Move dead letters back to pending; the running service delivers them."""
    _replay(event_id, replay_all, "dead letter", "EVENT_ID", lambda store, one: store.replay(one),
            "replayed {count} dead letter(s); the running service will deliver them")


@click.command("replay-parked")
@click.option("--id", "parked_id", help="The id of one parked email (<mailbox_id>:<uidvalidity>:<uid>).")
@click.option("--all", "replay_all", is_flag=True, help="Replay every parked email.")
@with_appcontext
def replay_parked_command(parked_id: str | None, replay_all: bool) -> None:
    """Ask the mailbox's lease holder to re-read parked emails and run the pipeline on them again."""
    _replay(parked_id, replay_all, "parked email", "PARKED_ID", lambda store, one: store.request_replay(one),
            "requested a replay of {count} parked email(s); the mailbox's lease holder carries it out "
            "(a refusal, e.g. when the email is gone, shows on /api/status)")
