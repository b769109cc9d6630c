"""The ``chromaguard`` command line."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .config.settings import OPTIONS, load_settings
from .errors import ChromaguardError


def _fail(message: str, code: int) -> NoReturn:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="chromaguard")
def main() -> None:
    """A production front door for Chroma: health checks, auth, CORS, telemetry, backups."""


@main.command()
@_settings_options
@_one_line_errors
def serve(config_file: str | None, **flags: Any) -> None:
    """Start the Chroma engine behind the front door."""
    from .service import serve as run_service
    from .telemetry.logs import setup_logging

    settings = load_settings(flags=flags, config_file=config_file)
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
    settings = load_settings(flags=flags, config_file=config_file)
    values = settings.redacted()
    principals = _principals(settings)
    if as_json:
        click.echo(json.dumps({
            "settings": {name: {"value": value, "source": settings.source_of(name)} for name, value in values.items()},
            "credentials": principals,
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
    if principals:
        who = Table(title="who may call (secrets never shown)")
        for column in ("name", "role", "tenant", "databases", "how the role was decided"):
            who.add_column(column)
        for p in principals:
            who.add_row(p["name"], p["role"], p["tenant"] or "(all)", ", ".join(p["databases"] or ["(all)"]),
                        p["how"])
        console.print(who)
    for warning in settings.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    for note in settings.notes:
        console.print(f"note: {note}", highlight=False)


def _principals(settings: Any) -> list[dict[str, Any]]:
    """Who the credentials let in, for ``config``: names, roles and scopes, never secrets."""
    if settings.auth_provider == "none":
        return []
    from .access.credentials import CredentialsError, load_store

    try:
        store = load_store(settings.auth_provider, settings.auth_credentials_file, settings.auth_credentials,
                           file_setting=settings.name_of("auth_credentials_file"),
                           inline_setting=settings.name_of("auth_credentials"))
    except CredentialsError as exc:
        _fail(f"error: {exc}", 2)
    return [{"name": p.name, "role": p.role, "tenant": p.tenant,
             "databases": list(p.databases) if p.databases else None, "how": p.how}
            for p in store.principals()]


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
    from .health.statusview import fetch_status, render
    from .probe import Unhealthy, default_target

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


@contextlib.contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on a terminal; nothing when output goes to a file or pipe."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _service_url(url: str | None) -> str:
    from .probe import default_target

    return (url or default_target()).rstrip("/")


@main.command()
@click.option("--url", default=None, help="The running chromaguard (default: from CHROMA_SERVER_HOST/PORT).")
@click.option("--token", envvar="CHROMAGUARD_TOKEN", default=None, help="Admin token when auth is on.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("backups"),
              show_default=True, help="Directory for the archives.")
@click.option("--keep", type=click.IntRange(min=0), default=0, help="Keep only the newest N archives (0 = all).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Offline: back up this data dir directly (nothing may be running on it).")
@click.option("--compress-level", type=click.IntRange(1, 9), default=3, show_default=True)
@_one_line_errors
def backup(url: str | None, token: str | None, output: Path, keep: int, data_dir: Path | None,
           compress_level: int) -> None:
    """A consistent backup archive, taken while the service runs (writes held for a moment)."""
    from .backup import take as backups

    with _progress("backup", None) as advance:
        report = (lambda stage, n, total: advance(n)) if advance else None
        if data_dir is not None:
            result = backups.offline(data_dir, output, level=compress_level, progress=report)
        else:
            result = backups.online(_service_url(url), output, token=token, level=compress_level, progress=report)
    held = "offline" if result.write_hold_ms is None else f"writes held for {result.write_hold_ms:.1f} ms"
    click.echo(f"backup written: {result.path} ({result.size / 2**20:.1f} MiB, {result.collections} collection(s), "
               f"{result.records} record(s), {held}, {result.seconds:.1f}s)")
    if keep:
        for path in backups.prune(output, keep):
            click.echo(f"pruned: {path}")


@main.command()
@click.argument("archive", type=click.Path(path_type=Path))
@_one_line_errors
def verify(archive: Path) -> None:
    """Check an archive's checksums, then open it with the real engine and compare with its manifest."""
    from .backup.restore import verify as run_verify

    with _progress("verify", archive.stat().st_size if archive.is_file() else None) as advance:
        report = run_verify(archive, progress=advance)
    click.echo(f"verified: {archive} ({report.collections} collection(s), {report.records} record(s), "
               f"{report.sampled} sampled record(s) identical, taken {report.manifest['created_at']})")


@main.command()
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Replace a data dir that is not empty.")
@_one_line_errors
def restore(archive: Path, data_dir: Path, force: bool) -> None:
    """Verify an archive and swap it in as the data dir, atomically."""
    from .backup.restore import restore as run_restore

    report = run_restore(archive, data_dir, force=force)
    click.echo(f"restored: {data_dir} from {archive} ({report.collections} collection(s), "
               f"{report.records} record(s), verified)")


@main.command("export")
@click.option("--url", default=None, help="Any Chroma server (default: the local chromaguard).")
@click.option("--token", envvar="CHROMAGUARD_TOKEN", default=None)
@click.option("--collection", "names", multiple=True, help="Only these collections (repeatable).")
@click.option("--tenant", default="default_tenant", show_default=True)
@click.option("--database", default="default_database", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .jsonl.gz file to write.")
@_one_line_errors
def export_command(url: str | None, token: str | None, names: tuple[str, ...], tenant: str, database: str,
                   output: Path) -> None:
    """Collections to a portable JSON Lines file (ids, embeddings, documents, metadatas, configuration)."""
    from .backup.transfer import export

    with _progress("export", None) as advance:
        result = export(_service_url(url), output, token=token, names=list(names) or None, tenant=tenant,
                        database=database, progress=advance)
    click.echo(f"exported: {output} ({result.collections} collection(s), {result.records} record(s), "
               f"{result.rate:.0f} records/s)")


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--url", default=None, help="Any Chroma server (default: the local chromaguard).")
@click.option("--token", envvar="CHROMAGUARD_TOKEN", default=None)
@click.option("--tenant", default="default_tenant", show_default=True)
@click.option("--database", default="default_database", show_default=True)
@click.option("--replace", is_flag=True, help="Delete collections that already exist first.")
@_one_line_errors
def import_command(file: Path, url: str | None, token: str | None, tenant: str, database: str, replace: bool) -> None:
    """Load an export into any Chroma server, in batches of its maximum batch size."""
    from .backup.transfer import import_

    with _progress("import", None) as advance:
        result = import_(file, _service_url(url), token=token, replace=replace, tenant=tenant, database=database,
                         progress=advance)
    click.echo(f"imported: {file} ({result.collections} collection(s), {result.records} record(s), "
               f"{result.rate:.0f} records/s)")


@main.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--fix", is_flag=True, help="Rewrite the files, applying every safe fix (comments and order kept).")
@click.option("--diff", "show_diff", is_flag=True, help="Print the fixes as a unified diff instead of writing.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif"]), default="text", show_default=True)
@click.option("--fail-on", type=click.Choice(["info", "warning", "error"]), default="warning", show_default=True,
              help="Exit 1 when a finding is at least this severe.")
@click.option("--explain", metavar="RULE", help="Print a rule's documentation (e.g. CG101).")
@click.option("--rules-markdown", is_flag=True, help="Print the rule reference page (docs/doctor-rules.md).")
@click.option("--live", metavar="URL", help="Probe a running Chroma, chromaguard or Ollama instead of files.")
@click.option("--token", envvar="CHROMAGUARD_TOKEN", default=None, help="With --live: a token to try.")
@click.option("--require-model", multiple=True, help="With --live on Ollama: models that must be pulled.")
def doctor(files: tuple[Path, ...], fix: bool, show_diff: bool, fmt: str, fail_on: str, explain: str | None,
           rules_markdown: bool, live: str | None, token: str | None, require_model: tuple[str, ...]) -> None:
    """Find (and fix) what breaks Chroma and Ollama deployments in compose files, or in a live server."""
    from . import doctor as doc
    from .doctor import report as render

    if explain:
        rule = doc.RULES.get(explain.upper())
        if rule is None:
            _fail(f"no rule {explain!r}; rules are {', '.join(doc.RULES)}", 2)
        click.echo(f"{rule.id} {rule.name} ({rule.severity}{', fixed by --fix' if rule.fixable else ''})\n"
                   f"{rule.summary}\n\n{rule.explanation}")
        return
    if rules_markdown:
        click.echo(doc.reference_markdown(), nl=False)
        return
    if live:
        from .doctor.live import examine

        outcome = examine(live, token=token, models=list(require_model))
        findings = outcome.findings
        if fmt == "text":
            click.echo(f"{live}: {outcome.kind}; " + ", ".join(f"{k}={v}" for k, v in outcome.facts.items()))
    else:
        try:
            report = doc.check_files(list(files) or doc.default_files(Path.cwd()))
        except doc.DoctorError as exc:
            _fail(str(exc), 2)
        findings = report.findings
        if fix or show_diff:
            changes = doc.apply_fixes(report)
            if show_diff:
                click.echo(doc.unified_diff(changes), nl=False)
                return
            for path, (_, after) in changes.items():
                doc.write_atomically(path, after)
                click.echo(f"fixed: {path}" + (" (its layout could not be kept line for line: rewritten in "
                                               "a standard one; the meaning is only the fixes')"
                                               if path in report.relaid else ""), err=True)
            findings = doc.check_files([f.path for f in report.files]).findings
    output = {"text": render.text, "json": render.as_json, "sarif": render.sarif}[fmt](findings)
    click.echo(output)
    sys.exit(1 if any(doc.at_least(f.rule.severity, fail_on) for f in findings) else 0)


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@_one_line_errors
def init(directory: Path, force: bool) -> None:
    """Write a docker-compose deployment: chromaguard, Ollama, an OpenTelemetry Collector and Jaeger."""
    from .init import write

    for path in write(directory, force=force):
        click.echo(f"wrote {path}")
    click.echo("next: cp chroma_tokens.example.json chroma_tokens.json (put real tokens in it), "
               "then docker compose up -d")
