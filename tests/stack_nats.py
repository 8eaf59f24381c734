"""A real nats-server running the stack's own configuration, for the tests of its users and its TLS.

deploy/nats/nats-server.conf with the secrets deploy/secrets.sh writes, mounted where stack.yml's nats-1 mounts
them (its `secrets:` list, read here, under a folder of the test's); only the ports, the store and that folder
are this machine's, and it runs alone (no cluster block, no routes). Clients connect over TLS with the CA
secrets.sh made, checking the certificate's name `nats` (the servers' alias on the bus network) since they
reach the server at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import yaml

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

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def password(self, user: str) -> str:
        return (self.secrets / f"nats_{user.replace('-', '_')}_password").read_text().strip()

    async def connect(self, user: str, **options: Any) -> nats.NATS:
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


@contextmanager
def stack_nats(folder: Path, tls: bool = True) -> Iterator[StackNats]:
    """The stack's nats-server (as nats-1, alone), until the block ends; without `tls`, its clients' `tls {}`
    block is left out (plain TCP, for bench/nats_tls.py's comparison)."""
    secrets = write_secrets(folder / "secrets")
    root = folder / "root"
    path = mount(secrets, root)
    # A cluster of one has no JetStream (it waits for routes): the server runs alone, without the cluster
    # block and the routes' settings.
    held = root / "etc" / "nats" / "secrets.conf"
    route_settings = re.compile(r"^NATS_ROUTE(S|_PASSWORD): .*\n", re.MULTILINE)
    assert len(route_settings.findall(held.read_text())) == 2, "the routes' settings moved"
    held.write_text(route_settings.sub("", held.read_text()))
    port = free_port()
    conf = path.read_text()
    conf = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}")
    conf = conf.replace("http_port: 8222", f"http_port: {free_port()}")
    conf, clusters = re.subn(r"\ncluster \{.*?\n\}\n", "\n", conf, flags=re.DOTALL)
    assert clusters == 1, "the cluster block moved"
    if not tls:
        conf, blocks = re.subn(r"\ntls \{.*?\n\}\n", "\n", conf, flags=re.DOTALL)
        assert blocks == 1, "the tls block moved"
    conf = conf.replace("store_dir: /data", f"store_dir: {folder / 'store'}")
    assert str(port) in conf, "the configuration's ports moved"
    path.write_text(conf)
    env = {**os.environ, "PULSESTACK_NATS_SERVICE": "nats-1", "PULSESTACK_NATS_SERVER_NAME": "nats-1-test"}
    binary = Path(sys.executable).parent / "nats-server"
    log = (folder / "nats.log").open("wb")
    process = subprocess.Popen([str(binary), "-c", str(path)], env=env, stdout=log, stderr=log)
    try:
        wait_for_port(port)
        server = StackNats(port, secrets, tls, process.pid)
        asyncio.run(delivering(server))
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


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
