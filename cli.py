"""Flask CLI commands: ``process-email`` (parse one saved email) and ``replay-dead-letters``."""

from __future__ import annotations

from flask import Flask


def register_cli(app: Flask) -> None:
    try:
        from email_processing.cli import process_email_command
    except ImportError:  # being built in parallel; the command appears once the module exists
        process_email_command = None
    if process_email_command is not None:
        app.cli.add_command(process_email_command)
    try:
        from background.replay import replay_dead_letters_command
    except ImportError:
        replay_dead_letters_command = None
    if replay_dead_letters_command is not None:
        app.cli.add_command(replay_dead_letters_command)
