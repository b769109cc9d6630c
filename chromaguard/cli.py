"""The ``chromaguard`` command line."""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable

import click

from . import __version__
from .config import OPTIONS, Settings, load_settings
from .errors import ChromaguardError


def _fail(message: str, code: int) -> None:
    click.echo(f"chromaguard: error: {message}", err=True)
    sys.exit(code)


def _one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ChromaguardError as exc:
            _fail(str(exc), exc.exit_code)

    return wrapper


def _settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The flags shared by every command that builds the settings."""
    decorators = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="YAML config file (env CHROMAGUARD_CONFIG)."),
        click.option("--host", default=None, help="Listen address (CHROMA_SERVER_HOST). Default 127.0.0.1."),
        click.option("--port", default=None, help="Listen port (CHROMA_SERVER_HTTP_PORT). Default 8000."),
        click.option("--data-dir", default=None, help="Data directory (PERSIST_DIRECTORY). Default ./chroma-data."),
        click.option("--persistent/--ephemeral", default=None,
                     help="Keep data (default) or use a temporary dir removed at shutdown (IS_PERSISTENT)."),
        click.option("--allow-reset/--no-allow-reset", default=None, help="Allow the reset API (ALLOW_RESET)."),
        click.option("--cors-allow-origins", default=None,
                     help='Browser origins allowed, JSON list or comma list (CHROMA_SERVER_CORS_ALLOW_ORIGINS).'),
        click.option("--auth-provider", default=None, help="none, token or basic (CHROMA_SERVER_AUTH_PROVIDER)."),
        click.option("--auth-credentials-file", default=None,
                     help="Tokens or htpasswd file (CHROMA_SERVER_AUTH_CREDENTIALS_FILE)."),
        click.option("--upstream", default=None,
                     help="Front an existing Chroma server instead of the embedded engine (CHROMAGUARD_UPSTREAM)."),
        click.option("--upstream-token", default=None, help="Token for the upstream (CHROMAGUARD_UPSTREAM_TOKEN)."),
        click.option("--drain-timeout", default=None, help="Seconds in-flight requests get on SIGTERM. Default 30."),
        click.option("--log-format", default=None, help="text or json (CHROMAGUARD_LOG_FORMAT)."),
        click.option("--log-level", default=None, help="debug, info, warning or error."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _build_settings(config_file: str | None, flags: dict[str, Any]) -> Settings:
    return load_settings(flags=flags, config_file=config_file)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="chromaguard")
def main() -> None:
    """A production front door for Chroma: health checks, auth, CORS, telemetry, backups."""


@main.command()
@_settings_options
@_one_line_errors
def serve(config_file: str | None, **flags: Any) -> None:
    """Start the Chroma engine behind the front door."""
    from .logs import setup_logging
    from .server import serve as run_service

    settings = _build_settings(config_file, flags)
    setup_logging(settings.log_format, settings.log_level)
    log = logging.getLogger("chromaguard")
    for note in settings.notes:
        log.debug("%s", note)
    for warning in settings.warnings:
        log.warning("%s", warning)
    run_service(settings)


@main.command("config")
@_settings_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_one_line_errors
def show_config(config_file: str | None, as_json: bool, **flags: Any) -> None:
    """Print the effective configuration, where each value came from, and warnings."""
    settings = _build_settings(config_file, flags)
    values = settings.redacted()
    if as_json:
        click.echo(json.dumps({
            "settings": {name: {"value": value, "source": settings.source_of(name)} for name, value in values.items()},
            "warnings": settings.warnings,
            "notes": settings.notes,
        }, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="chromaguard configuration")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("source")
    for option in OPTIONS:
        table.add_row(option.name, json.dumps(values[option.name]), settings.source_of(option.name))
    console = Console(width=None if sys.stdout.isatty() else 200)  # pipes get unwrapped lines
    console.print(table)
    for warning in settings.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    for note in settings.notes:
        console.print(f"note: {note}", highlight=False)


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def health(args: tuple[str, ...]) -> None:
    """Probe chromaguard, Chroma, Ollama, a URL or tcp://host:port (exit 0 healthy, 1 not)."""
    from .probe import main as probe_main

    sys.exit(probe_main(list(args)))


@main.command()
@click.argument("url", required=False)
@click.option("--token", envvar="CHROMAGUARD_TOKEN", default=None, help="Admin token when auth is on.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="Refresh every 2 seconds.")
@_one_line_errors
def status(url: str | None, token: str | None, as_json: bool, watch: bool) -> None:
    """Show front door, engine and Ollama state, collections and disk."""
    from .probe import Unhealthy, default_target
    from .statusview import fetch_status, render

    url = url or default_target()
    try:
        data = fetch_status(url, token)
    except Unhealthy as exc:
        _fail(str(exc), 1)
    if as_json and not watch:
        click.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.live import Live

    console = Console(width=None if sys.stdout.isatty() else 160)
    if not watch:
        console.print(render(data))
        return
    import time

    with Live(render(data), console=console, refresh_per_second=1) as live:
        while True:
            time.sleep(2)
            try:
                live.update(render(fetch_status(url, token)))
            except Unhealthy as exc:
                live.update(f"[red]{exc}[/red]")
