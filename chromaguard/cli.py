"""The ``chromaguard`` command line."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
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
        except OSError as exc:  # a disk full, a folder not writable: said in one line, never a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}; free space or fix the permissions there, then retry", 1)

    return wrapper


def _set_env(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:
            os.environ[name] = "1" if value is True else str(value)
    return store


def _tls_client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """How this command checks an https:// server; every client of ours reads it from the env
    (probe.client_tls), so the flags only set it for this process."""
    from .probe import CACERT_ENV, INSECURE_ENV

    func = click.option("--insecure", is_flag=True, expose_value=False, callback=_set_env(INSECURE_ENV),
                        help="https:// without checking the server's certificate.")(func)
    return click.option("--cacert", type=click.Path(dir_okay=False), expose_value=False,
                        callback=_set_env(CACERT_ENV),
                        help=f"CA bundle the server's certificate must chain to (env {CACERT_ENV}).")(func)


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
        click.option("--ssl-certfile", default=None,
                     help="Serve HTTPS with this PEM certificate (CHROMAGUARD_SSL_CERTFILE)."),
        click.option("--ssl-keyfile", default=None, help="Its private key (CHROMAGUARD_SSL_KEYFILE)."),
        click.option("--ssl-ca-certs", default=None,
                     help="CA bundle for client certificates (CHROMAGUARD_SSL_CA_CERTS)."),
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
    from .access.credentials import CredentialsError
    from .access.loading import configured_store

    try:
        store, warnings = configured_store(settings)
    except CredentialsError as exc:
        _fail(f"error: {exc}", 2)
    settings.warnings.extend(warnings)
    return [{"name": p.name, "role": p.shown_role(), "tenant": p.tenant,
             "databases": list(p.databases) if p.databases else None, "how": p.how,
             **({"actions": sorted(p.actions)} if p.actions is not None else {})}
            for p in store.principals()]


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def health(args: tuple[str, ...]) -> None:
    """Probe chromaguard, Chroma, Ollama, a URL or tcp://host:port (exit 0 healthy, 1 not)."""
    from .probe import main as probe_main

    sys.exit(probe_main(list(args)))


@main.command()
@_tls_client_options
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


def _keep_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """restic's retention flags, shared by ``backup --to`` and ``backups prune``."""
    for name, meaning in reversed((("last", "the N newest backups"),
                                   ("hourly", "the newest of each of the last N hours"),
                                   ("daily", "the newest of each of the last N days"),
                                   ("weekly", "the newest of each of the last N weeks"),
                                   ("monthly", "the newest of each of the last N months"))):
        func = click.option(f"--keep-{name}", f"keep_{name}", type=click.IntRange(min=0), default=0,
                            help=f"Keep {meaning}.")(func)
    return func


def _policy(keep: dict[str, int]) -> Any:
    from .backup.retention import Policy

    return Policy(**{name[len("keep_"):]: keep[name] for name in keep})


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


@main.command()
@_tls_client_options
@click.option("--url", default=None, help="The running chromaguard (default: from CHROMA_SERVER_HOST/PORT).")
@click.option("--token", envvar="CHROMAGUARD_TOKEN", default=None, help="Admin token when auth is on.")
@click.option("--to", "repository", envvar="CHROMAGUARD_BACKUP_REPOSITORY", default=None,
              help="A backup repository: a folder, s3://bucket/prefix, gs://… or az://… (only new chunks upload).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("backups"),
              show_default=True, help="Without --to: the directory for single-file archives.")
@click.option("--keep", type=click.IntRange(min=0), default=0, help="Archives: keep only the newest N (0 = all).")
@_keep_options
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Offline: back up this data dir directly (nothing may be running on it).")
@click.option("--compress-level", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_one_line_errors
def backup(url: str | None, token: str | None, repository: str | None, output: Path, keep: int,
           data_dir: Path | None, compress_level: int, as_json: bool, **keep_rules: int) -> None:
    """A consistent backup, taken while the service runs (writes held for a moment)."""
    from .backup import take as backups

    if repository:
        _backup_to(repository, url, token, data_dir, as_json, keep_rules)
        return
    with _progress("backup", None) as advance:
        report = (lambda stage, n, total: advance(n)) if advance else None
        if data_dir is not None:
            result = backups.offline(data_dir, output, level=compress_level, progress=report)
        else:
            result = backups.online(_service_url(url), output, token=token, level=compress_level, progress=report)
    pruned = [str(path) for path in backups.prune(output, keep)] if keep else []
    if as_json:
        _echo_json({"path": str(result.path), "size": result.size, "collections": result.collections,
                    "records": result.records, "write_hold_ms": result.write_hold_ms,
                    "seconds": round(result.seconds, 3), "pruned": pruned})
        return
    held = "offline" if result.write_hold_ms is None else f"writes held for {result.write_hold_ms:.1f} ms"
    click.echo(f"backup written: {result.path} ({result.size / 2**20:.1f} MiB, {result.collections} collection(s), "
               f"{result.records} record(s), {held}, {result.seconds:.1f}s)")
    for path in pruned:
        click.echo(f"pruned: {path}")


def _backup_to(url: str, service: str | None, token: str | None, data_dir: Path | None, as_json: bool,
               keep_rules: dict[str, int]) -> None:
    from .backup import take as backups

    repository = _open_repository(url, create=True)
    with _progress("backup", None) as advance:
        report = (lambda stage, n, total: advance(n)) if advance else None
        if data_dir is not None:
            info = backups.offline_to(data_dir, repository, progress=report)
        else:
            info = backups.online_to(_service_url(service), repository, token=token, progress=report)
    policy = _policy(keep_rules)
    pruned = None if policy.empty else repository.prune(policy)
    if as_json:
        _echo_json({**info.as_json(), "repository": url, "pruned": pruned.removed if pruned else []})
        return
    held = "offline" if info.write_hold_ms is None else f"writes held for {info.write_hold_ms:.1f} ms"
    click.echo(f"backup {info.id} in {url}: {info.size / 2**20:.1f} MiB, {info.new_bytes / 2**20:.1f} MiB new "
               f"({info.stored_bytes / 2**20:.1f} MiB uploaded), {info.collections} collection(s), "
               f"{info.records} record(s), {held}")
    if pruned is not None:
        _echo_pruned(pruned)


def _echo_pruned(report: Any) -> None:
    for backup_id in report.removed:
        click.echo(f"forgot: {backup_id}")
    click.echo(f"kept {len(report.kept)} backup(s), removed {len(report.removed)}, deleted {report.packs_removed} "
               f"pack(s) ({report.bytes_freed / 2**20:.1f} MiB)")


def _open_repository(url: str, create: bool = False) -> Any:
    """A repository, opened with the password of CHROMAGUARD_BACKUP_PASSWORD(_FILE) when set."""
    from .backup.crypto import password_from
    from .backup.repository import Repository

    return Repository.open(url, create=create, password=password_from())


def _is_archive(target: str) -> bool:
    return Path(target).is_file()


def _when(value: str | None) -> float | None:
    """--at: an ISO 8601 time, UTC unless it says otherwise."""
    if value is None:
        return None
    import datetime

    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        _fail(f"--at {value!r}: not a time; for example 2026-12-02T03:00:00Z (UTC unless it says otherwise)", 2)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


@main.command()
@click.argument("target")
@click.option("--id", "backup_id", default=None, help="Repository: this backup (default: the newest).")
@click.option("--all", "every", is_flag=True, help="Repository: check the chunks of every backup, then test-restore "
              "the chosen one.")
@click.option("--chunks-only", is_flag=True, help="Repository: check the chunks, skip the test restore.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_one_line_errors
def verify(target: str, backup_id: str | None, every: bool, chunks_only: bool, as_json: bool) -> None:
    """Prove a backup: checksums, then the data opened by the real engine and compared with its manifest.

    TARGET is an archive file or a backup repository (folder, s3://, gs://, az://)."""
    from .backup.restore import verify as run_verify
    from .backup.restore import verify_in

    if _is_archive(target):
        archive = Path(target)
        with _progress("verify", archive.stat().st_size) as advance:
            report = run_verify(archive, progress=advance)
        if as_json:
            _echo_json({"archive": target, "collections": report.collections, "records": report.records,
                        "sampled": report.sampled, "created_at": report.manifest["created_at"]})
        else:
            click.echo(f"verified: {archive} ({report.collections} collection(s), {report.records} record(s), "
                       f"{report.sampled} sampled record(s) identical, taken {report.manifest['created_at']})")
        return

    repository = _open_repository(target)
    chosen = repository.select(backup_id)
    results: list[dict[str, Any]] = []
    for other in (repository.ids() if every else []):
        if other != chosen:
            results.append({"id": other, "chunks_bytes": verify_in(repository, other, full=False)})
    with _progress("verify", None) as advance:
        found = verify_in(repository, chosen, progress=advance, full=not chunks_only)
    if isinstance(found, int):
        results.append({"id": chosen, "chunks_bytes": found})
    else:
        results.append({"id": chosen, "collections": found.collections, "records": found.records,
                        "sampled": found.sampled})
    if as_json:
        _echo_json({"repository": target, "verified": results})
        return
    for result in results:
        if "records" in result:
            click.echo(f"verified: {result['id']} in {target} (chunks checked, restored into a scratch engine: "
                       f"{result['collections']} collection(s), {result['records']} record(s), "
                       f"{result['sampled']} sampled record(s) identical)")
        else:
            click.echo(f"verified: {result['id']} in {target} ({result['chunks_bytes'] / 2**20:.1f} MiB of chunks "
                       "checked)")


@main.command()
@click.argument("target")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--id", "backup_id", default=None, help="Repository: this backup.")
@click.option("--at", "at", default=None, help="Repository: the newest backup at or before this time (ISO 8601).")
@click.option("--force", is_flag=True, help="Replace a data dir that is not empty.")
@_one_line_errors
def restore(target: str, data_dir: Path, backup_id: str | None, at: str | None, force: bool) -> None:
    """Verify a backup and swap it in as the data dir, atomically.

    TARGET is an archive file or a backup repository (default: its newest backup)."""
    from .backup.restore import restore as run_restore
    from .backup.restore import restore_from

    if _is_archive(target):
        if backup_id or at:
            _fail("--id and --at choose a backup in a repository; an archive is one backup", 2)
        report = run_restore(Path(target), data_dir, force=force)
        source = target
    else:

        if backup_id and at:
            _fail("--id and --at both choose a backup; give one of them", 2)
        repository = _open_repository(target)
        chosen = repository.select(backup_id, _when(at))
        with _progress("restore", None) as advance:
            report = restore_from(repository, chosen, data_dir, force=force, progress=advance)
        source = f"{target} backup {chosen}"
    click.echo(f"restored: {data_dir} from {source} ({report.collections} collection(s), "
               f"{report.records} record(s), verified)")


@main.group()
def backups() -> None:
    """What a backup repository holds: list, prune, forget, unlock."""


@backups.command("list")
@click.argument("repository")
@click.option("--json", "as_json", is_flag=True, help="Print the backups as JSON.")
@_one_line_errors
def backups_list(repository: str, as_json: bool) -> None:
    """Every backup: id, time, size, new bytes, collections, records, last verification."""

    repo = _open_repository(repository)
    found = repo.backups()
    if as_json:
        _echo_json({"repository": repository, "backups": [b.as_json() for b in found], "stored_bytes": repo.size()})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "time (UTC)", "size", "new", "collections", "records", "hold ms", "verified")
    for b in found:
        checked = "-" if b.verified is None else \
            f"{'ok' if b.verified.get('ok') else 'FAILED'} {b.verified.get('time', '')}".strip()
        table.add_row(b.id, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(b.time)), _mib(b.size), _mib(b.new_bytes),
                      str(b.collections), str(b.records), "-" if b.write_hold_ms is None else f"{b.write_hold_ms:.1f}",
                      checked)
    Console(width=160).print(table)
    click.echo(f"{len(found)} backup(s), {_mib(repo.size())} stored")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@backups.command("prune")
@click.argument("repository")
@_keep_options
@click.option("--dry-run", is_flag=True, help="Say what would go; delete nothing.")
@click.option("--json", "as_json", is_flag=True)
@_one_line_errors
def backups_prune(repository: str, dry_run: bool, as_json: bool, **keep_rules: int) -> None:
    """Forget the backups the --keep-* rules do not keep, then delete the chunks no kept backup uses."""

    report = _open_repository(repository).prune(_policy(keep_rules), dry_run=dry_run)
    if as_json:
        _echo_json({"kept": report.kept, "removed": report.removed, "packs_removed": report.packs_removed,
                    "bytes_freed": report.bytes_freed, "dry_run": dry_run})
    elif dry_run:
        for backup_id in report.removed:
            click.echo(f"would forget: {backup_id}")
        click.echo(f"would keep {len(report.kept)} backup(s)")
    else:
        _echo_pruned(report)


@backups.command("forget")
@click.argument("repository")
@click.option("--id", "backup_id", required=True, help="The backup to remove.")
@_one_line_errors
def backups_forget(repository: str, backup_id: str) -> None:
    """Remove one backup (and the chunks only it used)."""

    _open_repository(repository).forget(backup_id)
    click.echo(f"forgot: {backup_id}")


@backups.command("unlock")
@click.argument("repository")
@_one_line_errors
def backups_unlock(repository: str) -> None:
    """Remove a lock left by a backup or prune that was killed (only when it is known to be gone)."""

    removed = _open_repository(repository).unlock()
    click.echo(f"{removed} lock(s) removed" if removed else "the repository was not locked")


@main.command("export")
@_tls_client_options
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
@_tls_client_options
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
@_tls_client_options
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
@click.option("--wheel", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="chromaguard's wheel to build the image from (default: built from this chromaguard's source, "
                   "or the wheel it was installed from).")
@_one_line_errors
def init(directory: Path, force: bool, wheel: Path | None) -> None:
    """Write a docker-compose deployment: chromaguard (from its own wheel, pinned by hash), Ollama, an
    OpenTelemetry Collector and Jaeger, and Prometheus and Grafana in the monitoring profile."""
    from .init import write

    for path in write(directory, force=force, wheel=wheel):
        click.echo(f"wrote {path}")
    click.echo("next: cp chroma_tokens.example.json chroma_tokens.json (put real tokens in it), "
               "then docker compose up -d")
