"""Real processes for tests: a chromaguard service and a bare Chroma engine."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import httpx

ENGINE_PID = re.compile(r"engine started \(pid (\d+)\) on 127\.0\.0\.1:(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_head(sock: socket.socket) -> bytes:
    """Bytes off ``sock`` until a blank line ends an HTTP head (less if it closes first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def clean_env(**extra: str) -> dict[str, str]:
    """The test process environment without any Chroma or chromaguard settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHROMA", "OTEL_")) and k not in ("PERSIST_DIRECTORY", "IS_PERSISTENT",
                                                                   "ALLOW_RESET", "ANONYMIZED_TELEMETRY")}
    env.update(extra)
    return env


def cli(*args: str, timeout: float = 300, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``chromaguard ARGS`` as a user runs it, in a clean environment (plus ``env``)."""
    return subprocess.run([sys.executable, "-m", "chromaguard", *args], capture_output=True, text=True,
                          env=clean_env(**env), timeout=timeout, cwd=cwd)


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None,
              log: Path | None = None, verify: ssl.SSLContext | bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {log.read_text() if log else ''}")
        try:
            if httpx.get(url, timeout=1.0, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready in {timeout}s: {log.read_text() if log else ''}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Guard:
    """``chromaguard serve`` as a child process with its own port, data dir and log file."""

    started: list[Guard] = []  # since the current test began (conftest reports their logs when it fails)

    def __init__(self, *args: str, data_dir: Path | None = None, env: dict[str, str] | None = None,
                 port: int | None = None, ca: Path | None = None) -> None:
        self.ca = ca  # HTTPS: the CA its certificate chains to (the certificate comes in env or args)
        self.tmp = tempfile.TemporaryDirectory(prefix="cg-test-")
        self.port = port or free_port()
        self.data_dir = data_dir or Path(self.tmp.name) / "data"
        self.log_path = Path(self.tmp.name) / "guard.log"
        self.args = ["--port", str(self.port), "--data-dir", str(self.data_dir), *args]
        self.env = clean_env(**(env or {}))
        self.proc: subprocess.Popen | None = None
        self.last_log = ""  # the log as it was when the service closed (its folder is gone then)

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Guard:
        Guard.started.append(self)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "chromaguard", "serve", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        if wait:
            wait_http(self.url + "/healthz", proc=self.proc, log=self.log_path,
                      verify=ssl.create_default_context(cafile=str(self.ca)) if self.ca else True)
        return self

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:  # closed: what it held when it closed
            return self.last_log

    def engine(self) -> tuple[int, int]:
        """(pid, port) of the engine most recently started."""
        found = ENGINE_PID.findall(self.log)
        assert found, self.log
        pid, port = found[-1]
        return int(pid), int(port)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.log_path.exists():
            self.last_log = self.log_path.read_text(errors="replace")
        self.tmp.cleanup()

    def __enter__(self) -> Guard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class BareEngine:
    """The Chroma engine alone, exactly as ``chroma run`` starts it: the reference we compare with."""

    def __init__(self, data_dir: Path | None = None, *, otel_endpoint: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        """``otel_endpoint``: the engine's own tracing on, as chromaguard configures it (its
        ``open_telemetry`` block and request spans only), for a like-with-like baseline."""
        self.tmp = tempfile.TemporaryDirectory(prefix="cg-bare-")
        self.port = free_port()
        self.data_dir = data_dir or Path(self.tmp.name) / "data"
        config = Path(self.tmp.name) / "config.yaml"
        text = (f'listen_address: "127.0.0.1"\nport: {self.port}\n'
                f'persist_path: "{self.data_dir}"\nallow_reset: true\n')
        env = clean_env(**(env or {}))
        if otel_endpoint:
            from chromaguard.telemetry.instruments import ENGINE_REQUEST_SPANS_FILTER

            text += f'open_telemetry:\n  service_name: "bare-engine"\n  endpoint: "{otel_endpoint}"\n'
            env["RUST_LOG"] = ENGINE_REQUEST_SPANS_FILTER
        config.write_text(text)
        self.log_path = Path(self.tmp.name) / "engine.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys, chromadb_rust_bindings as b; b.cli(['chroma', 'run', sys.argv[1]])",
             str(config)], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        wait_http(self.url + "/api/v2/heartbeat", proc=self.proc, log=self.log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
        self.tmp.cleanup()


class NetnsPeer:
    """Another host for tests: a network namespace of our own, joined to this one by a veth pair.

    Traffic stays on that pair: the service is reached at ``address`` (our end) from the peer,
    whose requests arrive from ``peer_address`` — a real non-loopback caller, on no real network.
    """

    def __init__(self, index: int = 0) -> None:
        tag = f"{os.getpid() % 10000}{index}"
        self.name = f"cg-peer-{tag}"
        self._ours, self._theirs = f"cgp{tag}a", f"cgp{tag}b"
        subnet = 64 + (os.getpid() + index) % 128
        self.address, self.peer_address = f"10.231.{subnet}.1", f"10.231.{subnet}.2"

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def __enter__(self) -> NetnsPeer:
        try:
            self._ip("netns", "add", self.name)
            self._ip("link", "add", self._ours, "type", "veth", "peer", "name", self._theirs)
            self._ip("link", "set", self._theirs, "netns", self.name)
            self._ip("addr", "add", f"{self.address}/30", "dev", self._ours)
            self._ip("link", "set", self._ours, "up")
            for args in (("addr", "add", f"{self.peer_address}/30", "dev", self._theirs),
                         ("link", "set", self._theirs, "up"), ("link", "set", "lo", "up")):
                self._ip("netns", "exec", self.name, "ip", *args)
        except (OSError, subprocess.SubprocessError) as exc:
            self.__exit__()
            raise RuntimeError(f"cannot make a network namespace here: {exc}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self._ours], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    def run(self, *argv: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``argv`` run on the peer host."""
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              env=env, timeout=timeout)

    def request(self, method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """One HTTP request sent from the peer: (status, body)."""
        script = ("import httpx, json, sys; a = json.loads(sys.argv[1]); "
                  "r = httpx.request(a[0], a[1], headers=a[2], timeout=120); "
                  "sys.stdout.write(json.dumps([r.status_code, r.text]))")
        done = self.run(sys.executable, "-c", script, json.dumps([method, url, headers or {}]))
        if done.returncode != 0:
            raise RuntimeError(f"request from the peer failed: {done.stderr.strip()}")
        status, body = json.loads(done.stdout)
        return int(status), str(body)


class Workers:
    """Threads that run until the ``with`` block ends: started on entry, stopped and joined on
    exit. Subclasses fill ``self.threads`` and watch ``self.stop``."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)
