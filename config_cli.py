"""``flask --app app check-config [PATH] [--allow-missing-env]``: validate a configuration file, starting nothing.

Prints every error of the file (and of the environment's settings) on stdout, one ``CONFIG: <path>: <reason>`` line
each, and exits 3; a valid file prints ``OK: <n> mailboxes, <n> targets, <n> routes`` and exits 0. PATH defaults
to $RENDER_SIGNAL_CONFIG (neither: a usage error, exit 2). With ``--allow-missing-env`` an unset or empty
``${NAME}`` is not an error (a file can be checked where its secrets are not). No poller, no Redis, no network:
the command reads the environment and the file, nothing else.
"""

from __future__ import annotations

import os

import click

EXIT_CONFIG = 3


@click.command("check-config")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--allow-missing-env", is_flag=True,
              help="An unset or empty ${NAME} reference is not an error (checked where the secrets are not).")
def check_config_command(path: str | None, allow_missing_env: bool) -> None:
    """Check a configuration file (PATH, default $RENDER_SIGNAL_CONFIG) and print every error."""
    from config_file import CONFIG_ENV, read_config_file
    from settings import ConfigError, Settings

    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        click.echo(str(exc))
        raise SystemExit(EXIT_CONFIG) from None
    path = path or settings.config_path
    if not path:
        raise click.UsageError(f"give PATH or set {CONFIG_ENV}")
    result = read_config_file(path, os.environ, settings, allow_missing_env=allow_missing_env)
    if result.errors or result.config is None:
        for error in result.errors:
            click.echo(" ".join(str(error).split()))  # one line each, whatever a reason carries
        raise SystemExit(EXIT_CONFIG)
    config = result.config
    click.echo(f"OK: {len(config.mailboxes)} mailboxes, {len(config.targets)} targets, {len(config.routes)} routes")
