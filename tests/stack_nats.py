"""Real nats-servers running the stack's own configuration, for the tests of its users and its TLS.

deploy/nats/nats-server.conf with the secrets deploy/secrets.sh writes, mounted where stack.yml's nats-1 mounts
them (its `secrets:` list, read here, under a folder of the test's); only the ports, the store and that folder
are this machine's. `stack_nats` runs one server alone (no cluster block, no routes), `stack_cluster` three
routed to each other. Clients connect over TLS with the CA secrets.sh made, checking the certificate's name
`nats` (the servers' alias on the bus network) since they reach the server at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import yaml
from nats.aio.client import Client as NATS

from pulsestack_cli.localstack import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
TLS_HOSTNAME = "nats"


def write_secrets(folder: Path) -> Path:
    """A fresh folder of the stack's secrets, as `deploy/secrets.sh --files` writes them (a CA of its own)."""
    subprocess.run(["bash", str(REPO / "deploy" / "secrets.sh"), "--files", str(folder)], check=True,
                   capture_output=True)
    return folder


def trusting(ca_cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_cert))


@dataclass(frozen=True)
class StackNats:
    port: int
    secrets: Path

    tls: bool = True
    pid: int = 0  # the server's process
    route_port: int = 0  # in a cluster

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def password(self, user: str) -> str:
        return (self.secrets / f"nats_{user.replace('-', '_')}_password").read_text().strip()

    async def connect(self, user: str, **options: Any) -> NATS:
        """`user` with its password, over TLS trusting the stack's CA; `options` go to nats.connect."""
        secure = {"tls": trusting(self.secrets / "ca_cert"), "tls_hostname": TLS_HOSTNAME} if self.tls else {}
        return await nats.connect(self.url, **{"user": user, "password": self.password(user), **secure, **options})


def mount(secrets: Path, root: Path) -> Path:
    """Each secret of stack.yml's nats-1 at its target, and the configuration at its own, under `root` instead
    of /; returns the configuration's path (its paths point under `root` too)."""
    service = yaml.safe_load((REPO / "stack.yml").read_text())["services"]["nats-1"]
    for mount in service["secrets"]:
        target = root / mount["target"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((secrets / mount["source"]).read_bytes())
    conf = (REPO / "deploy" / "nats" / "nats-server.conf").read_text().replace('"/etc/nats/', f'"{root}/etc/nats/')
    assert '"/etc/' not in conf, "a path the secrets do not cover"
    path = root / "etc" / "nats" / "nats-server.conf"
    path.write_text(conf)
    return path


def edit(path: Path, pattern: str, replacement: str, flags: re.RegexFlag = re.MULTILINE) -> None:
    """Replaces what `pattern` matches in the file, exactly once."""
    text, count = re.subn(pattern, replacement, path.read_text(), flags=flags)
    assert count == 1, f"{pattern!r} matches {count} times in {path}: the configuration moved"
    path.write_text(text)


def listen_here(path: Path, port: int, store: Path) -> None:
    """The configuration's ports and store as this machine's."""
    edit(path, r"^listen: 0\.0\.0\.0:4222$", f"listen: 127.0.0.1:{port}")
    edit(path, r"^http_port: 8222$", f"http_port: {free_port()}")
    edit(path, r"store_dir: /data$", f"store_dir: {store}")


@contextmanager
def serve(path: Path, name: str, port: int) -> Iterator[int]:
    """nats-server with the configuration at `path`, as the service `name`, until the block ends; yields its
    process id."""
    env = {**os.environ, "PULSESTACK_NATS_SERVICE": name, "PULSESTACK_NATS_SERVER_NAME": f"{name}-test"}
    binary = Path(sys.executable).parent / "nats-server"
    with (path.parent / "nats.log").open("wb") as log:
        process = subprocess.Popen([str(binary), "-c", str(path)], env=env, stdout=log, stderr=log)
        try:
            wait_for_port(port)
            yield process.pid
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextmanager
def stack_nats(folder: Path, tls: bool = True) -> Iterator[StackNats]:
    """The stack's nats-server (as nats-1, alone), until the block ends; without `tls`, its clients' `tls {}`
    block is left out (plain TCP, for bench/nats_tls.py's comparison)."""
    secrets = write_secrets(folder / "secrets")
    path = mount(secrets, folder / "root")
    # A cluster of one has no JetStream (it waits for routes): the server runs alone, without the cluster
    # block and the routes' settings.
    edit(path.parent / "secrets.conf", r"^NATS_ROUTES: .*\n", "")
    edit(path.parent / "secrets.conf", r"^NATS_ROUTE_PASSWORD: .*\n", "")
    edit(path, r"\ncluster \{.*?\n\}\n", "\n", re.DOTALL)
    if not tls:
        edit(path, r"\ntls \{.*?\n\}\n", "\n", re.DOTALL)
    port = free_port()
    listen_here(path, port, folder / "store")
    with serve(path, "nats-1", port) as pid:
        server = StackNats(port, secrets, tls, pid)
        asyncio.run(delivering(server))
        yield server


@contextmanager
def stack_cluster(folder: Path) -> Iterator[list[StackNats]]:
    """Three of the stack's nats-servers routed to each other as in production (mutual TLS, the routes' user),
    on 127.0.0.1: their certificate is the one deploy/secrets.sh's `server_cert` makes, for that address
    (production's names nats-1..3, which do not resolve here)."""
    secrets = write_secrets(folder / "secrets")
    for made in ("nats_server_cert", "nats_server_key"):
        (secrets / made).unlink()
    subprocess.run(["bash", "-c", 'source "$0"; server_cert "$1" nats_server nats 127.0.0.1',
                    str(REPO / "deploy" / "secrets.sh"), str(secrets)], check=True, capture_output=True)
    ports = [(free_port(), free_port()) for _ in range(3)]
    password = (secrets / "nats_route_password").read_text().strip()
    routes = json.dumps([f"nats-route://route:{password}@127.0.0.1:{route}" for _, route in ports])
    with ExitStack() as running:
        servers = []
        for number, (port, route) in enumerate(ports, start=1):
            path = mount(secrets, folder / f"nats-{number}")
            edit(path.parent / "secrets.conf", r"^NATS_ROUTES: .*$", f"NATS_ROUTES: {routes}")
            edit(path, r"^  listen: 0\.0\.0\.0:6222$", f"  listen: 127.0.0.1:{route}")
            edit(path, r"^  cluster_advertise: .*$", f"  cluster_advertise: 127.0.0.1:{route}")
            edit(path, r"^client_advertise: .*$", f"client_advertise: 127.0.0.1:{port}")
            listen_here(path, port, folder / f"nats-{number}" / "store")
            pid = running.enter_context(serve(path, f"nats-{number}", port))
            servers.append(StackNats(port, secrets, True, pid, route))
        yield servers


async def delivering(server: StackNats) -> None:
    """Until the server delivers what it is sent: for a moment after its port opens, it may not."""
    nc = await server.connect("admin")
    try:
        sub = await nc.subscribe("probe")
        for attempt in range(100):
            await nc.publish("probe", b"%d" % attempt)
            try:
                await sub.next_msg(timeout=0.1)
                return
            except nats.errors.TimeoutError:
                continue
        raise AssertionError("the server never delivered a message")
    finally:
        await nc.close()
