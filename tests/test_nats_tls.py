"""The NATS servers' TLS and hashed passwords, against a real nats-server with the stack's configuration.

deploy/nats/nats-server.conf's `tls {}` with the CA and certificate deploy/secrets.sh makes
(tests/stack_nats.py): a service configured as in stack.yml (NATS_CA_FILE) connects and publishes to JetStream;
a client without TLS, or trusting another CA, is refused; the server holds bcrypt hashes, against which the
right password passes and a wrong one does not. Three servers route to each other over mutual TLS (a stream
replicated on all three), and a route port refuses a peer without a certificate of the CA.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from pulsestack.config import CommonConfig
from pulsestack.service import close_nats, connect_nats
from tests.helpers import eventually
from tests.stack_nats import TLS_HOSTNAME, StackNats, stack_cluster, stack_nats, trusting, write_secrets

SERVICE_USERS = ("admin", "ingest-udp", "ingest-http", "raw-processor", "alerting", "system")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackNats]:
    with stack_nats(tmp_path_factory.mktemp("nats-tls")) as running:
        yield running


async def test_a_service_configured_with_the_ca_publishes_to_jetstream(
    server: StackNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_URL", server.url)
    monkeypatch.setenv("NATS_CA_FILE", str(server.secrets / "ca_cert"))
    monkeypatch.setenv("NATS_TLS_HOSTNAME", TLS_HOSTNAME)
    monkeypatch.setenv("PULSESTACK_NATS_USER", "admin")
    monkeypatch.setenv("PULSESTACK_NATS_PASSWORD_FILE", str(server.secrets / "nats_admin_password"))
    nc = await connect_nats(CommonConfig.from_env("test"), "test")
    try:
        assert nc.connected_server_version.major >= 2 and nc._server_info.get("tls_required") is True
        js = nc.jetstream()
        await js.add_stream(name="TLS_PROBE", subjects=["tls.probe"])
        ack = await js.publish("tls.probe", b"x" * 2048)
        assert ack.stream == "TLS_PROBE" and ack.seq == 1
    finally:
        await close_nats(nc)


def test_the_server_requires_tls_before_anything_else(server: StackNats) -> None:
    """What a client without TLS sees: the INFO line demands TLS, and a plain CONNECT gets no PONG."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
        info = json.loads(plain.recv(4096).decode().removeprefix("INFO "))
        assert info["tls_required"] is True
        user, password = "admin", server.password("admin")
        plain.sendall(f'CONNECT {{"user":"{user}","pass":"{password}","verbose":false}}\r\nPING\r\n'.encode())
        answer = b""
        while chunk := plain.recv(4096):  # the server closes the connection
            answer += chunk
        assert b"PONG" not in answer


async def test_a_client_without_tls_is_refused(server: StackNats) -> None:
    with pytest.raises(Exception) as refused:
        await nats.connect(f"nats://127.0.0.1:{server.port}", user="admin", password=server.password("admin"),
                           allow_reconnect=False, connect_timeout=5)
    assert "tls" in str(refused.value).lower() or "ssl" in str(refused.value).lower(), refused.value


async def test_a_client_trusting_another_ca_is_refused(server: StackNats, tmp_path: Path) -> None:
    other = write_secrets(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        await nats.connect(server.url, user="admin", password=server.password("admin"),
                           tls=trusting(other / "ca_cert"), tls_hostname=TLS_HOSTNAME, allow_reconnect=False,
                           connect_timeout=5)


async def test_a_certificate_for_another_name_is_refused(server: StackNats) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await server.connect("admin", tls_hostname="postgres", allow_reconnect=False, connect_timeout=5)


def test_the_server_holds_bcrypt_hashes_not_the_passwords(server: StackNats) -> None:
    held = (server.secrets / "nats_server_secrets").read_text()
    for user in SERVICE_USERS:
        assert server.password(user) not in held, user
    variables = [line.split(":", 1) for line in held.splitlines() if line.startswith("NATS_") and "PASSWORD" in line]
    assert len(variables) == len(SERVICE_USERS) + 1  # and the routes'
    assert all(json.loads(value).startswith("$2") for _, value in variables), variables


@pytest.mark.parametrize("user", ["ingest-udp", "alerting"])
async def test_a_user_logs_in_with_its_password_and_not_with_another(server: StackNats, user: str) -> None:
    nc = await server.connect(user, allow_reconnect=False)
    await nc.close()
    for wrong in (server.password(user) + "0", server.password("admin")):
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await server.connect(user, password=wrong, allow_reconnect=False, connect_timeout=5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[StackNats]]:
    with stack_cluster(tmp_path_factory.mktemp("nats-routes")) as servers:
        yield servers


async def test_routes_carry_a_replicated_stream_over_tls(cluster: list[StackNats]) -> None:
    nc = await cluster[0].connect("admin")
    try:
        js = nc.jetstream()

        async def replicated() -> bool:
            try:
                await js.add_stream(name="ROUTED", subjects=["routed"], num_replicas=3)
            except nats.errors.Error:  # the meta leader is being elected over the routes
                return False
            return True

        await eventually(replicated, timeout=60, interval=0.5)
        ack = await js.publish("routed", b"x" * 2048)
        assert ack.seq == 1

        async def everywhere() -> bool:
            info = await js.stream_info("ROUTED")
            replicas = info.cluster.replicas if info.cluster else None
            return bool(replicas) and len(replicas) == 2 and all(r.current for r in replicas or [])

        await eventually(everywhere, timeout=30, interval=0.5)
    finally:
        await nc.close()


def route_handshake(server: StackNats, certificate: Path | None, key: Path | None) -> bool:
    """Whether the route port keeps a TLS connection that presents `certificate` (or none) open: it is waiting
    for the route's CONNECT then, instead of having refused the peer."""
    context = trusting(server.secrets / "ca_cert")
    if certificate and key:
        context.load_cert_chain(certificate, key)
    with socket.create_connection(("127.0.0.1", server.route_port), timeout=5) as raw:
        try:  # routes start with the TLS handshake
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as secure:
                secure.settimeout(0.5)
                return not secure.recv(1) == b""  # EOF: closed by the server
        except TimeoutError:
            return True
        except (ssl.SSLError, ConnectionError):
            return False


def test_routes_accept_only_peers_with_a_certificate_of_the_ca(cluster: list[StackNats], tmp_path: Path) -> None:
    server = cluster[0]
    assert route_handshake(server, server.secrets / "nats_server_cert", server.secrets / "nats_server_key")
    assert not route_handshake(server, None, None)
    other = write_secrets(tmp_path / "other")
    assert not route_handshake(server, other / "nats_server_cert", other / "nats_server_key")
