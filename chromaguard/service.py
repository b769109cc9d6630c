"""The service lifecycle: validate → lock → engine → ready → front door → drain → stop.

Signals are handled here: SIGTERM/SIGINT during start-up stop the
engine we began; while serving they stop accepting, drain in-flight requests
(bounded by the drain timeout), then stop the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Coroutine
from importlib.metadata import version
from pathlib import Path
from typing import Any

from . import __version__
from .access.auth import Authenticator
from .access.cors import CorsPolicy
from .access.credentials import CredentialsError, CredentialStore
from .access.credentials_watch import CredentialsWatcher
from .access.loading import configured_store
from .backup.mirror import Mirror
from .backup.scheduler import BackupScheduler
from .backup.snapshot_api import ControlAccess, SnapshotService
from .backup.upgrade import backup_before_upgrade, record_version
from .config.settings import Settings
from .engine.catalog import count_collections
from .engine.datalock import DataDirLock
from .engine.process import EngineProcess
from .engine.supervisor import HealthPolicy, Supervisor
from .errors import ConfigError, StartupError
from .health.readiness import Dependencies, DiskFloor
from .http11.client import UpstreamPool
from .http11.server import HttpServer
from .http11.tls import ServerTls, TlsError
from .proxy.configpolicy import ConfigPolicy
from .proxy.frontdoor import AlwaysAvailable, Backend, FrontDoor
from .proxy.writegate import WriteGate
from .telemetry.audit import AuditLog
from .telemetry.instruments import Telemetry, engine_log_filter, engine_telemetry

log = logging.getLogger("chromaguard")

_CLIENT_AUTH_HEADERS = frozenset({b"authorization", b"x-chroma-token"})


def prepare_data_dir(settings: Settings) -> Path:
    """Create the data dir and prove we can write there, before anything starts."""
    if not settings.persistent:
        return Path(tempfile.mkdtemp(prefix="chromaguard-ephemeral-"))
    path = settings.data_dir.resolve()
    name = settings.name_of("data_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".chromaguard-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(name, str(settings.data_dir), f"the data dir is not writable ({exc.strerror})",
                          f"{name}=./chroma-data") from None
    return path


def bind_listener(settings: Settings) -> socket.socket:
    """Reserve the front door's address now, so a taken port is a start-up error, not a crash later."""
    host_name, port_name = settings.name_of("host"), settings.name_of("port")
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise ConfigError(host_name, settings.host, "cannot resolve this listen address",
                          f"{host_name}=0.0.0.0") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(port_name, str(settings.port), f"the port is already in use on {settings.host}",
                              f"{port_name}={settings.port + 1 if settings.port < 65535 else 8000}") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(port_name, str(settings.port), "permission denied (ports below 1024 need root)",
                              f"{port_name}=8000") from None
        raise ConfigError(host_name, settings.host, f"cannot listen on this address ({exc.strerror})",
                          f"{host_name}=127.0.0.1") from None
    sock.set_inheritable(False)
    return sock


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir: Path | None = None
        self.lock: DataDirLock | None = None
        self.supervisor: Supervisor | None = None
        self.server: HttpServer | None = None
        self.auth: Authenticator | None = None
        self.watcher: CredentialsWatcher | None = None
        self.tls: ServerTls | None = None
        self.audit: AuditLog | None = None
        self.telemetry: Telemetry | None = None
        self.snapshots: SnapshotService | None = None
        self.backups: BackupScheduler | None = None
        self._reloading: asyncio.Future[bool] | None = None
        self._stop_requested = asyncio.Event()
        self._signals = 0

    def load_credentials(self) -> CredentialStore:
        store, warnings = configured_store(self.settings)
        for warning in warnings:
            log.warning("%s", warning)
        return store

    def _prepare_auth(self) -> None:
        s = self.settings
        if s.auth_provider == "none":
            return
        try:
            store = self.load_credentials()
        except CredentialsError as exc:
            name = s.name_of("auth_credentials_file" if s.auth_credentials_file else "auth_credentials")
            raise ConfigError(name, str(s.auth_credentials_file or "***"), str(exc).split(": ", 1)[-1],
                              f'{name}=/etc/chromaguard/tokens.json holding ["my-token"]') from None
        self.auth = Authenticator(s.auth_provider, store, transport=s.auth_token_transport_header,
                                  open_paths=s.auth_open_paths, rate_limit=s.rate_limit)

    def _warn_about_exposure(self) -> None:
        s = self.settings
        if self.auth is None and s.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("!!! AUTH IS OFF and chromaguard listens on %s: anyone who can reach port %d can read, "
                        "change and delete all data. Set CHROMA_SERVER_AUTH_PROVIDER=token and "
                        "CHROMA_SERVER_AUTH_CREDENTIALS_FILE, or listen on 127.0.0.1 !!!", s.host, s.port)
        if self.auth is not None and "*" in s.cors_allow_origins:
            log.warning("%s allows every origin (*) while auth is on: any web page can call the API with a "
                        "token it holds; list your origins instead", s.name_of("cors_allow_origins"))

    def prepare(self) -> socket.socket:
        """Everything that can fail on bad input, before any process starts."""
        self._prepare_auth()
        try:
            self.telemetry = Telemetry(self.settings)
        except ValueError as exc:  # the SDK's own OTEL_* variables, checked by the SDK
            raise StartupError(f"OpenTelemetry settings: {exc}") from None
        if self.settings.upstream is None:
            self.data_dir = prepare_data_dir(self.settings)
            self.lock = DataDirLock(self.data_dir)
            self.lock.acquire()
        try:
            listener = bind_listener(self.settings)
        except BaseException:
            self.release()
            raise
        if self.data_dir is not None and self.settings.persistent and self.settings.upgrade_backup:
            try:
                backup_before_upgrade(self.data_dir, self.settings.backup_repository,
                                      self.settings.backup_password_value())
            except BaseException:
                listener.close()
                self.release()
                raise
        return listener

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
        if self.data_dir is not None and not self.settings.persistent:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _on_hangup(self) -> None:
        if self.audit is not None:
            self.audit.reopen()
        if self.tls is not None:
            self.tls.check()
        if self.watcher is not None:
            self._reloading = asyncio.ensure_future(self.watcher.reload("SIGHUP"))  # kept until it is done
        elif self.auth is not None and self.settings.authz_provider:  # inline credentials, an RBAC file
            try:
                self._apply_credentials(self.load_credentials())
                log.info("SIGHUP: the RBAC file was read again")
            except CredentialsError as exc:
                log.error("SIGHUP: the RBAC file was not reloaded (%s); the previous permissions stay in force", exc)
        elif self.tls is None and self.audit is None:
            log.info("SIGHUP: no credentials or certificate file to reload")

    def _apply_credentials(self, store: CredentialStore) -> None:
        assert self.auth is not None
        self.auth.store = store

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        log.info("received %s: shutting down", signal.Signals(signum).name)
        self._stop_requested.set()
        if self.server is not None:
            self.server.stop(force=self._signals > 1)

    async def run(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        self._warn_about_exposure()
        if self.auth is not None and self.settings.auth_credentials_file is not None:
            self.watcher = CredentialsWatcher(self.settings.auth_credentials_file, self.load_credentials,
                                              self._apply_credentials, self.auth.store,
                                              interval=self.settings.auth_reload_interval)
            self.watcher.start()
        pool: UpstreamPool | None = None
        disk_floor: DiskFloor | None = None
        scheduled: asyncio.Task[None] | None = None
        tls_watch: asyncio.Task[None] | None = None
        try:
            tls = self.tls = ServerTls(self.settings.tls_files()) if self.settings.ssl_certfile is not None else None
        except TlsError as exc:
            raise StartupError(f"{self.settings.name_of('ssl_certfile')}: {exc}") from None
        if self.settings.audit_log is not None:
            try:
                self.audit = AuditLog(self.settings.audit_log)
            except OSError as exc:
                raise StartupError(f"{self.settings.name_of('audit_log')}={self.settings.audit_log}: cannot open it "
                                   f"for appending ({exc.strerror or exc}); give a writable file or stdout") from None
        telemetry = self.telemetry
        assert telemetry is not None
        if self.audit is not None and telemetry.metrics is not None:
            audit = self.audit
            telemetry.metrics.audit_dropped = lambda: audit.dropped
        if telemetry.enabled:
            log.info("OpenTelemetry on: traces and metrics to %s as %s", self.settings.otel_endpoint,
                     self.settings.otel_service_name)
        try:
            backend: Backend
            if self.settings.upstream:
                pool = UpstreamPool(self.settings.upstream, extra_headers=self._upstream_headers())
                backend = AlwaysAvailable()
                where = f"upstream {pool.target.url}"
            else:
                assert self.data_dir is not None and self.lock is not None
                engine = EngineProcess(self.data_dir, port=self.settings.engine_port,
                                       allow_reset=self.settings.allow_reset,
                                       max_payload_bytes=self.settings.max_payload_bytes, lock_fd=self.lock.fd,
                                       telemetry=engine_telemetry(self.settings),
                                       otel_headers=self.settings.otel_headers,
                                       log_filter=engine_log_filter(self.settings))
                s = self.settings
                self.supervisor = Supervisor(engine, policy=HealthPolicy(
                    s.health_interval, s.health_timeout, s.health_retries, s.health_start_period,
                    s.health_heartbeat_timeout),
                    on_probe=lambda ok: telemetry.metrics.health_check("engine_probe", ok))
                supervisor, data_dir = self.supervisor, self.data_dir
                telemetry.metrics.engine_up = lambda: supervisor.available
                telemetry.metrics.engine_restarts = lambda: supervisor.restarts
                telemetry.metrics.collections = lambda: count_collections(data_dir)
                telemetry.metrics.data_dir = data_dir
                if not await self._until_stopped(self.supervisor.start()):
                    return
                if self.settings.persistent:
                    record_version(self.data_dir)  # the engine now serving it: the next upgrade is noticed
                log.info("engine health check every %gs (timeout %gs, heartbeat %gs, %d retries, start period %gs)",
                         s.health_interval, s.health_timeout, min(s.health_heartbeat_timeout, s.health_timeout),
                         s.health_retries, s.health_start_period)
                pool = UpstreamPool(engine.url)
                self.supervisor.pool = pool  # its requests waiting on the engine are watched
                backend = self.supervisor
                where = f"data in {self.data_dir}" + ("" if self.settings.persistent else " (ephemeral)")
            gate = snapshots = None
            if self.data_dir is not None:
                gate = WriteGate()
                mirror = Mirror(self.data_dir, self.settings.snapshot_dir) if self.settings.snapshot_mirror \
                    and self.settings.persistent else None
                snapshots = SnapshotService(gate, self.data_dir, staging_root=self.settings.snapshot_dir,
                                            max_kept=self.settings.snapshot_max_kept,
                                            min_free=self.settings.snapshot_min_free, mirror=mirror)
                self.snapshots = snapshots
                if self.settings.backup_schedule:
                    self.backups = BackupScheduler(self.settings, gate, self.data_dir, mirror=mirror)
                    scheduled = asyncio.get_running_loop().create_task(self.backups.run())
                    if telemetry.metrics is not None:
                        telemetry.metrics.backup = lambda: self.backups.state if self.backups else None
            if self.data_dir is not None:
                disk_floor = DiskFloor(self.data_dir)
                disk_floor.start()
            app = FrontDoor(pool, backend, gate=gate, snapshots=snapshots,
                            max_payload_bytes=self.settings.max_payload_bytes,
                            upstream_timeout=self.settings.upstream_timeout,
                            strip_request_headers=_CLIENT_AUTH_HEADERS
                            if self.settings.upstream_token or self.auth else frozenset(),
                            auth=self.auth, telemetry=telemetry,
                            deps=Dependencies(
                                pool, backend, data_dir=self.data_dir, min_free_disk=self.settings.min_free_disk,
                                ollama_url=self.settings.ollama_url, ollama_models=self.settings.ollama_models,
                                listen=f"{self.settings.scheme}://{_show_host(self.settings.host)}:{self.settings.port}",
                                upstream=self.settings.upstream, backups=self.backups,
                                backup_max_age=self.settings.backup_max_age, audit=self.audit),
                            cors=CorsPolicy(self.settings.cors_allow_origins) if self.settings.cors_allow_origins
                            else None,
                            config_policy=ConfigPolicy(self.settings.allowed_embedding_functions),
                            control=ControlAccess(self.settings.control_token),
                            disk_floor=disk_floor, audit=self.audit)
            self.server = HttpServer(app, keep_alive=75.0, drain_timeout=self.settings.drain_timeout,
                                     head_timeout=self.settings.head_timeout,
                                     body_min_rate=self.settings.body_min_rate,
                                     max_connections_per_client=self.settings.max_connections_per_client)
            if self._stop_requested.is_set():
                return
            log.info("chromaguard %s serving Chroma %s on %s://%s:%d (%s)", __version__, version("chromadb"),
                     self.settings.scheme,
                     _show_host(self.settings.host), self.settings.port, where)
            # What start-up built lives as long as the process: keep the collector from walking it again.
            gc.collect()
            gc.freeze()
            if tls is not None:
                tls_watch = asyncio.get_running_loop().create_task(tls.watch())
            await self.server.serve(sock, ssl=tls.listener if tls is not None else None,
                                    tls_refuses=tls.refuses if tls is not None else None)
        finally:
            if tls_watch is not None:
                tls_watch.cancel()
            if self.audit is not None:
                self.audit.close()  # after the drain: every request's line is queued
            if scheduled is not None:
                assert self.backups is not None
                self.backups.stopping.set()  # an upload under way stops at its next write
                scheduled.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scheduled
            if disk_floor is not None:
                disk_floor.stop()
            if self.watcher is not None:
                await self.watcher.stop()
            if pool is not None:
                pool.close()
            if self.snapshots is not None:
                self.snapshots.close()
            if self.supervisor is not None:
                await self.supervisor.stop()
                self.supervisor.engine.cleanup()
            self.release()
            telemetry.shutdown()
            log.info("chromaguard stopped")

    async def _until_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run start-up work unless a stop signal comes first; True when the work finished."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop_requested.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stop.cancel()
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    def _upstream_headers(self) -> list[tuple[bytes, bytes]]:
        token = self.settings.upstream_token
        if not token:
            return []
        if self.settings.upstream_token_header == "authorization":
            return [(b"authorization", b"Bearer " + token.encode())]
        return [(b"x-chroma-token", token.encode())]


def _show_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(settings: Settings) -> None:
    """Run the service until it is told to stop."""
    service = Service(settings)
    sock = service.prepare()
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        runner(service.run(sock))
    finally:
        sock.close()
