"""The real Chroma engine (the Rust server in the ``chromadb`` wheel) as a child process.

We write its YAML config ourselves and give it a scrubbed environment, so no
stray ``CHROMA_*`` variable can move it off the private loopback port.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from ..errors import StartupError
from ..http11.client import UpstreamError, fetch

log = logging.getLogger("chromaguard.engine")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BANNER = re.compile(r"^[\s(#=]*$")  # the logo and separator lines of `chroma run`
_LEVEL = re.compile(r"\b(ERROR|WARN|WARNING|INFO|DEBUG|TRACE)\b")
# Else: indented info/debug chatter (the engine colours its lines, so a line may start with ESC).
_PUMP_PAUSE = 0.05  # seconds between reads of a serving engine's output
_PIPE_SIZE = 1 << 20  # room for its output meanwhile (Linux default 64 KiB, unprivileged maximum 1 MiB)
_WORTH_A_LOOK = re.compile(rb"ERROR|WARN|panicked|^[^\s\x1b]", re.MULTILINE)
_SCRUBBED_PREFIXES = ("CHROMA_", "OTEL_")
_SCRUBBED_NAMES = {"ANONYMIZED_TELEMETRY", "IS_PERSISTENT", "PERSIST_DIRECTORY", "ALLOW_RESET"}


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def engine_config_yaml(port: int, data_dir: Path, *, allow_reset: bool, max_payload_bytes: int,
                       telemetry: dict[str, str] | None = None) -> str:
    """The engine's config: loopback only, our port, our data dir, and our collector if tracing is on."""
    import json

    lines: dict[str, object] = {
        "listen_address": "127.0.0.1",
        "port": port,
        "persist_path": str(data_dir.resolve()),
        "allow_reset": allow_reset,
        "max_payload_size_bytes": max_payload_bytes,
    }
    # JSON scalars are valid YAML and quote paths safely.
    text = "".join(f"{key}: {json.dumps(value)}\n" for key, value in lines.items())
    if telemetry:
        text += "open_telemetry:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in telemetry.items())
    return text


def engine_environment(otel_headers: tuple[tuple[str, str], ...] = (),
                       log_filter: str | None = None) -> dict[str, str]:
    """Our environment less any Chroma setting; ``log_filter`` is ``RUST_LOG`` unless the user set one."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_SCRUBBED_PREFIXES) and k not in _SCRUBBED_NAMES}
    if log_filter and not env.get("RUST_LOG"):
        env["RUST_LOG"] = log_filter
    if otel_headers:
        env["OTEL_EXPORTER_OTLP_HEADERS"] = ",".join(f"{k}={v}" for k, v in otel_headers)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _level_of(line: str, ready: bool, previous: int = logging.DEBUG) -> int:
    """Log level for one engine line in our log.

    The engine's warnings and errors keep their level; its info events (with tracing on it
    prints a dozen lines per request) and start-up chatter are debug. An indented line
    continues the event above it and shares its level.
    """
    if "panicked" in line:
        return logging.ERROR
    if line[:1].isspace() and not _LEVEL.search(line[:40]):
        return previous
    match = _LEVEL.search(line)
    if match:
        name = match.group(1)
        return logging.ERROR if name == "ERROR" else logging.WARNING if name.startswith("WARN") else logging.DEBUG
    return logging.INFO if ready else logging.DEBUG


def _output_pipe() -> tuple[int, int]:
    """A pipe for the engine's output, with room enough that a pausing reader never blocks it."""
    output, into = os.pipe()
    try:
        fcntl.fcntl(into, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
    except OSError:  # not Linux, or over /proc/sys/fs/pipe-max-size: the default size it is
        pass
    return output, into


class EngineProcess:
    """Start, watch and stop one engine process."""

    def __init__(self, data_dir: Path, *, port: int = 0, allow_reset: bool = False,
                 max_payload_bytes: int = 41943040, lock_fd: int | None = None,
                 telemetry: dict[str, str] | None = None, otel_headers: tuple[tuple[str, str], ...] = (),
                 log_filter: str | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_loopback_port()
        self.allow_reset = allow_reset
        self.max_payload_bytes = max_payload_bytes
        self.lock_fd = lock_fd
        self.telemetry = telemetry
        self.otel_headers = otel_headers
        self.log_filter = log_filter
        self.process: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None
        self.ready = False
        self.recent_output: collections.deque[str] = collections.deque(maxlen=20)
        self._pump: asyncio.Task[None] | None = None
        self._config_dir = tempfile.TemporaryDirectory(prefix="chromaguard-engine-")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        config_path = Path(self._config_dir.name) / "engine.yaml"
        config_path.write_text(engine_config_yaml(self.port, self.data_dir, allow_reset=self.allow_reset,
                                                  max_payload_bytes=self.max_payload_bytes,
                                                  telemetry=self.telemetry))
        self.recent_output.clear()
        self.ready = False
        output, into = _output_pipe()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "chromaguard._engine_main", str(os.getpid()), str(config_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=into, stderr=asyncio.subprocess.STDOUT,
                env=engine_environment(self.otel_headers, self.log_filter),
                pass_fds=(self.lock_fd,) if self.lock_fd is not None else (),
                start_new_session=True,  # a Ctrl-C in the terminal reaches the guard, which stops the engine in order
            )
        except BaseException:
            os.close(output)
            raise
        finally:
            os.close(into)
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                           os.fdopen(output, "rb", buffering=0))
        self.started_at = time.monotonic()
        self._pump = asyncio.create_task(self._pump_output(reader))
        log.info("engine started (pid %d) on 127.0.0.1:%d", self.process.pid, self.port)

    async def _pump_output(self, output: asyncio.StreamReader) -> None:
        """Relay the engine's output to our log; read in blocks, as it can be chatty."""
        pending = b""
        level = logging.DEBUG
        while True:
            block = await output.read(1 << 16)
            data = pending + block
            if (block and self.ready and level < logging.WARNING and not log.isEnabledFor(logging.DEBUG)
                    and not _WORTH_A_LOOK.search(data)):
                # A serving engine's routine chatter, which our log level drops anyway: keep only
                # the last lines, for the message if it dies.
                *lines, pending = data[-4096:].split(b"\n")
                self.recent_output.extend(line for line in (self._clean(raw) for raw in lines[-3:]) if line)
                level = logging.DEBUG
                continue
            lines = data.split(b"\n")
            pending = lines.pop() if block else b""
            for raw in lines:
                level = self._relay_line(raw, level)
            if not block:
                return
            if self.ready:
                # With tracing on the engine writes a dozen small lines per request: reading them
                # as they come would wake us that often. Let them gather (the pipe is enlarged).
                await asyncio.sleep(_PUMP_PAUSE)

    @staticmethod
    def _clean(raw: bytes) -> str:
        line = raw.decode(errors="replace").rstrip()
        if "\x1b" in line:
            line = _ANSI.sub("", line)
        return "" if not line.strip() or _BANNER.match(line) else line

    def _relay_line(self, raw: bytes, previous: int) -> int:
        line = self._clean(raw)
        if not line:
            return previous
        self.recent_output.append(line)
        level = _level_of(line, self.ready, previous)
        if log.isEnabledFor(level):
            log.log(level, "%s", line)
        return level

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the engine answers its readiness check; fail with its last words if it dies."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                await self._drain_output()
                said = " | ".join(list(self.recent_output)[-3:]) or "no output"
                raise StartupError(f"the Chroma engine exited during start-up (code {self.returncode}): {said}")
            try:
                status, _ = await fetch(self.url, "/api/v2/healthcheck", timeout=1.0)
                if status == 200:
                    self.ready = True
                    log.info("engine ready in %.2fs", time.monotonic() - (self.started_at or 0))
                    return
            except UpstreamError:
                pass
            if time.monotonic() > deadline:
                raise StartupError(f"the Chroma engine did not become ready within {timeout:.0f}s")
            await asyncio.sleep(0.05)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process else None

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        await self._drain_output()
        return code

    async def _drain_output(self) -> None:
        if self._pump is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
            except TimeoutError:
                pass

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if the engine has not exited within ``timeout``."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:  # a stopped (SIGSTOP) engine acts on the SIGTERM only once it runs again
            os.kill(process.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            log.warning("engine did not stop within %.0fs; killing it", timeout)
            self.kill()
            await process.wait()
        await self._drain_output()
        log.info("engine stopped (code %s)", process.returncode)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                os.kill(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cleanup(self) -> None:
        self._config_dir.cleanup()
