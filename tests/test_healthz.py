"""deploy/healthz, the health check of every pulsestack image, against a real HTTP server on loopback."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pulsestack_cli.localstack import free_port

HEALTHZ = Path(__file__).resolve().parent.parent / "deploy" / "healthz"


class _Ops(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        # No body: healthz hangs up after the status line.
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ops_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Ops]]]:
    handler = type("Ops", (_Ops,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def _healthz(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HEALTHZ), str(port)], capture_output=True, text=True, timeout=10)


def test_healthz_passes_on_200_and_fails_on_any_other_answer(ops_server) -> None:
    server, handler = ops_server
    port = server.server_address[1]
    assert _healthz(port).returncode == 0
    handler.status = 503
    failed = _healthz(port)
    assert failed.returncode == 1
    assert f"127.0.0.1:{port} answered 503" in failed.stderr


def test_healthz_fails_when_nothing_listens() -> None:
    assert _healthz(free_port()).returncode != 0


def test_healthz_needs_a_port() -> None:
    missing = subprocess.run([str(HEALTHZ)], capture_output=True, text=True, timeout=10)
    assert missing.returncode != 0
    assert "usage: healthz PORT" in missing.stderr
