"""A bare TCP forwarder (uvloop, bytes passed through unread): the floor of any proxy here.

Why in the bench: on this machine a hop costs something whatever the proxy does (one more
process to wake per direction, two more loopback transfers). The bare engine behind this
forwarder shows that floor side by side with chromaguard, which parses and checks every request.

    python bench/tcpforward.py UPSTREAM_PORT LISTEN_PORT
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvloop


class _Side(asyncio.Protocol):
    """One end of a forwarded connection; writes what it reads to its peer, with back-pressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Client(_Side):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Side, "127.0.0.1", self.upstream_port)
        except OSError:
            assert self.transport is not None
            self.transport.close()
            return
        assert self.transport is not None and upstream.transport is not None
        if self.transport.is_closing():  # the client left while we connected
            upstream.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        for data in self.pending:  # what came before the upstream connection was open
            upstream.transport.write(data)
        self.pending.clear()


async def _serve(upstream_port: int, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: _Client(upstream_port), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


class ProxyProcess:
    """A proxy child process on a free port in front of ``engine``, which it closes with itself."""

    proc: subprocess.Popen[Any]

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.engine.close()


class TcpForwarder(ProxyProcess):
    """The forwarder as a child process in front of ``engine``."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(engine.port), str(self.port)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        time.sleep(0.1)


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
