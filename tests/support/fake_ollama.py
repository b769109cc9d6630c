"""A small real HTTP server that speaks Ollama's API (Ollama itself cannot run here).

It answers ``GET /`` ("Ollama is running"), ``GET /api/tags`` (the pulled models) and
``GET /api/version``, like ``ollama serve`` does.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOllama:
    def __init__(self, models: list[str], port: int = 0) -> None:
        self.models = list(models)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/":
                    self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
                elif self.path == "/api/tags":
                    models = [{"name": m, "model": m, "size": 274302450, "digest": "0a109f422b47" * 5 + "abcd",
                               "modified_at": "2026-11-01T10:00:00Z",
                               "details": {"format": "gguf", "family": "nomic-bert"}} for m in owner.models]
                    self._send(200, json.dumps({"models": models}).encode(), "application/json")
                elif self.path == "/api/version":
                    self._send(200, b'{"version":"0.12.3"}', "application/json")
                else:
                    self._send(404, b"404 page not found", "text/plain")

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
