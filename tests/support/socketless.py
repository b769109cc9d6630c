"""One end of a connection without a socket, for driving protocol objects directly."""

from __future__ import annotations


class Socketless:
    """A transport that keeps what is written to it and whether reading is on."""

    def __init__(self, address: str = "127.0.0.1", protocol: object = None) -> None:
        self.address = address
        self.protocol = protocol  # told of the close on the next loop turn, as a real transport does
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.address, 40000) if name in ("peername", "sockname") else default

    def close(self) -> None:
        if self.protocol is not None and not self.closed:
            import asyncio

            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)  # type: ignore[attr-defined]
        self.closed = True

    abort = close
