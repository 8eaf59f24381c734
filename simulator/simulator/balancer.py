"""What Scaleway's load balancer does to an HTTPS connection it forwards to Traefik: it opens with a PROXY
protocol v2 header naming the client (Terraform's `lb_proxy_protocol = "v2"`). Tests and proofs use it to
ask Traefik as clients of chosen addresses would be seen behind the balancer."""

from __future__ import annotations

import socket
import ssl
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_TCP4 = bytes([0x21, 0x11])  # version 2, command PROXY; TCP over IPv4


def proxy_v2_header(source: str, destination: str, destination_port: int, source_port: int = 40_000) -> bytes:
    addresses = struct.pack("!4s4sHH", socket.inet_aton(source), socket.inet_aton(destination), source_port,
                            destination_port)
    return SIGNATURE + PROXY_TCP4 + struct.pack("!H", len(addresses)) + addresses


def status_behind_balancer(address: str, port: int, host: str, source: str, ca_file: str | None = None) -> int | None:
    """The status of `GET /` to `host` over TLS at address:port, sent behind a PROXY v2 header saying the client
    is `source`; None when the server drops the connection (it did not take the header). The server's
    certificate is checked against `ca_file` when given."""
    tls = ssl.create_default_context(cafile=ca_file)
    if ca_file is None:
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, port), timeout=10) as raw:
            raw.sendall(proxy_v2_header(source, address, port))
            with tls.wrap_socket(raw, server_hostname=host) as conn:
                conn.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                status_line = conn.recv(64).split(b"\r\n")[0]
    except (OSError, ssl.SSLError):
        return None
    return int(status_line.split()[1]) if status_line.startswith(b"HTTP/") else None
