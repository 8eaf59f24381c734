"""The Docker socket proxy: only the reads Traefik, Prometheus and swarm-exporter make reach the engine.

Real HAProxy (Debian's) runs the swarm proof's stand-in configuration (deploy/standins/socket-proxy.cfg,
the contract of tecnativa/docker-socket-proxy that stack.yml deploys) with stack.yml's settings for the
socket-proxy service, in front of a stand-in engine on a unix socket that records what reaches it. Each
consumer's reads pass; writes, and reads of sections nobody needs (containers, secrets, exec, images,
info, events), are answered 403 and never reach the engine. The swarm proof repeats the refusals against
the real engine, and shows Traefik's swarm provider and Prometheus' discovery working through the proxy.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingMixIn, UnixStreamServer

import pytest
import yaml

from pulsestack_cli.localstack import free_port
from tests.unavailable import unavailable

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "standins" / "socket-proxy.cfg"
# The image's defaults (tecnativa/docker-socket-proxy; the stand-in's Dockerfile sets the same): ping,
# version and events open, every other section closed unless the service's environment opens it.
IMAGE_DEFAULTS = {"PING": "1", "VERSION": "1", "EVENTS": "1", "LOG_LEVEL": "info"}

# What each consumer reads (paths as their Docker clients send them).
READS = {
    "traefik swarm provider": ["/_ping", "/v1.45/version", "/v1.45/services", "/v1.45/networks",
                               "/v1.45/tasks?filters=%7B%22service%22%3A%5B%22api%22%5D%7D"],
    "prometheus dockerswarm_sd": ["/v1.45/tasks", "/v1.45/services", "/v1.45/nodes", "/v1.45/networks"],
    "swarm-exporter": ["/services?status=true", "/nodes"],
}
REFUSED = [
    ("POST", "/v1.45/containers/create"), ("POST", "/v1.45/services/create"),
    ("POST", "/v1.45/services/pulsestack_api/update?version=3"), ("DELETE", "/v1.45/services/pulsestack_api"),
    ("PUT", "/v1.45/containers/abc/archive?path=/"), ("POST", "/v1.45/swarm/leave?force=1"),
    ("POST", "/v1.45/exec/abc/start"), ("DELETE", "/v1.45/nodes/abc"),
    ("GET", "/v1.45/containers/json"), ("GET", "/v1.45/secrets"), ("GET", "/v1.45/configs"),
    ("GET", "/v1.45/images/json"), ("GET", "/v1.45/info"), ("GET", "/v1.45/events"),
    ("GET", "/v1.45/swarm"), ("GET", "/v1.45/volumes"), ("GET", "//containers/json"),
    ("GET", "/v1.45/servicesx"), ("GET", "/v1.45"),
]


def proxy_environment() -> dict[str, str]:
    service = yaml.safe_load((REPO / "stack.yml").read_text())["services"]["socket-proxy"]
    return {**IMAGE_DEFAULTS, **{k: str(v) for k, v in service["environment"].items()}}


@pytest.fixture(scope="module")
def haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        unavailable("haproxy not found (install with: sudo bash .ci/tools-monitoring.sh)")
    return path


class _Engine(BaseHTTPRequestHandler):
    """A stand-in Docker engine: records each request that reaches it and answers 200 with an empty list."""

    seen: list[tuple[str, str]] = []

    def _answer(self) -> None:
        self.seen.append((self.command, self.path))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"[]")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer

    def address_string(self) -> str:  # a unix socket has no client address
        return "engine-client"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixServer(ThreadingMixIn, UnixStreamServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def proxy(haproxy: str) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """(port, what reached the engine): HAProxy in front of a recording engine on a unix socket."""
    folder = Path(tempfile.mkdtemp(prefix="socket-proxy-"))
    socket_path = str(folder / "docker.sock")
    engine = _UnixServer(socket_path, _Engine)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    port = free_port()
    config = folder / "haproxy.cfg"
    config.write_text(CONFIG.read_text().replace("bind :2375", f"bind 127.0.0.1:{port}"))
    env = {**os.environ, **proxy_environment(), "SOCKET_PATH": socket_path}
    checked = subprocess.run([haproxy, "-c", "-f", str(config)], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    process = subprocess.Popen([haproxy, "-db", "-f", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while status(port, "GET", "/_ping") is None:
            assert time.monotonic() < deadline, "haproxy did not start"
            time.sleep(0.1)
        _Engine.seen.clear()
        yield port, _Engine.seen
    finally:
        process.terminate()
        process.wait(10)
        engine.shutdown()
        engine.server_close()
        shutil.rmtree(folder, ignore_errors=True)


def status(port: int, method: str, path: str) -> int | None:
    """The proxy's answer to one request (None: nothing listens yet)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


@pytest.mark.parametrize("consumer", sorted(READS))
def test_each_consumers_reads_reach_the_engine(proxy: tuple[int, list[tuple[str, str]]],
                                               consumer: str) -> None:
    port, seen = proxy
    for path in READS[consumer]:
        seen.clear()
        assert status(port, "GET", path) == 200, path
        assert seen == [("GET", path)], path
    assert status(port, "HEAD", READS[consumer][-1]) == 200


@pytest.mark.parametrize(("method", "path"), REFUSED)
def test_writes_and_unneeded_sections_are_refused_before_the_engine(
        proxy: tuple[int, list[tuple[str, str]]], method: str, path: str) -> None:
    port, seen = proxy
    seen.clear()
    assert status(port, method, path) == 403
    assert seen == []


def test_stack_gives_the_socket_to_no_internet_facing_or_edge_service() -> None:
    """Only socket-proxy (and the node-local agents cAdvisor and Portainer's agent, which need the engine
    itself) mount the socket; none of them publishes a port or joins `edge`, and socket-proxy's network
    is internal, joined only by its three readers."""
    stack = yaml.safe_load((REPO / "stack.yml").read_text())
    services = stack["services"]
    mounting = {name for name, s in services.items()
                if any(str(v).split(":")[0] in ("/var/run/docker.sock", "/var/run") for v in s.get("volumes", []))}
    assert mounting == {"socket-proxy", "portainer-agent", "cadvisor"}, mounting
    for name in mounting:
        assert "ports" not in services[name] and "edge" not in services[name]["networks"], name
    assert stack["networks"]["docker-api"].get("internal") is True
    readers = {name for name, s in services.items() if "docker-api" in s.get("networks", [])}
    assert readers == {"socket-proxy", "traefik", "prometheus", "swarm-exporter"}, readers
    # Their images' own unprivileged users (nobody; pulsestack's uid 10001), no root override.
    for name in ("prometheus", "swarm-exporter"):
        assert "user" not in services[name], name
