"""Entry point of the engine child process: the real Chroma server, tied to its parent.

It asks the kernel to kill it when the guard dies (even by SIGKILL), so the
engine never lives on as an orphan holding the port and the data dir.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent(expected_parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the guard's own shutdown has to do
        return
    if os.getppid() != expected_parent:  # the parent died before prctl took effect
        os._exit(1)


def main() -> None:
    parent, config_path = int(sys.argv[1]), sys.argv[2]
    _die_with_parent(parent)
    import chromadb_rust_bindings

    try:
        chromadb_rust_bindings.cli(["chroma", "run", config_path])
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
