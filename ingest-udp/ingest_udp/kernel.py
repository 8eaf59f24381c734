"""The kernel's view of the ingest socket: receive buffer sizing and drop counts."""

from __future__ import annotations

import socket
from pathlib import Path

from pulsestack.logs import get_logger

log = get_logger(__name__)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def open_socket(host: str, port: int, receive_buffer: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    # The kernel caps SO_RCVBUF at net.core.rmem_max; with CAP_NET_ADMIN we may exceed it.
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < receive_buffer:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
        except OSError:
            pass
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports double
    if granted < receive_buffer:
        log.warning(
            "udp receive buffer smaller than asked; raise net.core.rmem_max",
            asked=receive_buffer, granted=granted,
        )
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def socket_drops(port: int) -> int:
    """Sum of the `drops` column of /proc/net/udp{,6} for sockets bound to `port`."""
    total = 0
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 12 and fields[1].endswith(suffix):
                total += int(fields[-1])
    return total
