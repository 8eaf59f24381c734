"""The stack's NATS users, against a real nats-server running the stack's own configuration.

deploy/nats/nats-server.conf and the secrets deploy/secrets.sh writes, as the swarm mounts them; only the
ports and the store folder are this machine's. Each service may subscribe to its own inboxes only (the
prefix connect_nats gives it), never to another's, and may publish only its own subjects.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from pulsestack.service import inbox_prefix
from pulsestack_cli.localstack import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("ingest-udp", "ingest-http", "raw-processor", "alerting")


def password_of(secrets: Path, user: str) -> str:
    return (secrets / f"nats_{user.replace('-', '_')}_password").read_text().strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("nats-conf")
    secrets = folder / "secrets"
    subprocess.run(["bash", str(REPO / "deploy" / "secrets.sh"), "--files", str(secrets)], check=True,
                   capture_output=True)
    port = free_port()
    conf = (REPO / "deploy" / "nats" / "nats-server.conf").read_text()
    conf = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}")
    conf = conf.replace("http_port: 8222", f"http_port: {free_port()}")
    conf = conf.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{free_port()}")  # its routes never connect
    conf = conf.replace("store_dir: /data", f"store_dir: {folder / 'store'}")
    assert str(port) in conf and str(folder) in conf and "6222" not in conf, "the configuration's ports moved"
    (folder / "nats-server.conf").write_text(conf)
    (folder / "secrets.conf").write_text((secrets / "nats_server_secrets").read_text())
    env = {**os.environ, "PULSESTACK_NATS_SERVICE": "nats-1", "PULSESTACK_NATS_SERVER_NAME": "nats-1-test"}
    binary = Path(sys.executable).parent / "nats-server"
    log = (folder / "nats.log").open("wb")
    process = subprocess.Popen([str(binary), "-c", str(folder / "nats-server.conf")], env=env, stdout=log,
                               stderr=log)
    try:
        wait_for_port(port)
        url = f"nats://127.0.0.1:{port}"
        asyncio.run(delivering(url, password_of(secrets, "admin")))
        yield url, secrets
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


async def delivering(url: str, password: str) -> None:
    """Until the server delivers what it is sent: for a moment after its port opens, it may not."""
    nc = await nats.connect(url, user="admin", password=password)
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


class Errors:
    """What the server told a client asynchronously (permission violations come that way)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def callback(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    async def wait_for(self, pattern: str) -> None:
        for _ in range(50):
            if any(re.search(pattern, line) for line in self.seen):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"no error matching {pattern!r}; seen {self.seen}")


@pytest.fixture
async def connect(server: tuple[str, Path]) -> AsyncIterator[object]:
    url, secrets = server
    clients: list[nats.NATS] = []

    async def as_user(user: str, errors: Errors | None = None, prefix: str | None = None) -> nats.NATS:
        nc = await nats.connect(url, user=user, password=password_of(secrets, user), allow_reconnect=False,
                                inbox_prefix=prefix or inbox_prefix(user), error_cb=(errors or Errors()).callback)
        clients.append(nc)
        return nc

    yield as_user
    for nc in clients:
        await nc.close()


@pytest.mark.parametrize("user", SERVICES)
async def test_a_service_receives_on_its_own_inboxes(connect, user: str) -> None:  # type: ignore[no-untyped-def]
    errors = Errors()
    nc = await connect(user, errors)
    admin = await connect("admin", errors)
    inbox = nc.new_inbox()
    assert inbox.startswith(f"_INBOX_{user}.")
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def deliver(msg: Msg) -> None:
        if not received.done():
            received.set_result(msg.data)

    await nc.subscribe(inbox, cb=deliver)
    # Sent again until it arrives: nats-py's flush can return before the server has the subscription.
    for _ in range(50):
        await admin.publish(inbox, b"reply")
        await asyncio.wait([received], timeout=0.1)
        if received.done():
            break
    assert received.done() and received.result() == b"reply", errors.seen


@pytest.mark.parametrize("user", SERVICES)
async def test_no_service_may_subscribe_to_the_shared_or_another_services_inboxes(  # type: ignore[no-untyped-def]
    connect, user: str
) -> None:
    errors = Errors()
    nc = await connect(user, errors)
    other = next(s for s in SERVICES if s != user)
    for subject in ("_INBOX.>", f"_INBOX_{other}.>", ">"):
        await nc.subscribe(subject)
        await nc.flush()
        await errors.wait_for(f'(?i)permissions violation for subscription to "{re.escape(subject)}"')


async def test_an_ingester_may_publish_neither_the_processors_subjects_nor_the_stream_api(  # type: ignore[no-untyped-def]
    connect,
) -> None:
    errors = Errors()
    nc = await connect("ingest-udp", errors)
    for subject in ("quarantine.raw", "raw.sigfox", "alerts.opened", "$JS.API.STREAM.DELETE.RAW",
                    "$JS.API.CONSUMER.MSG.NEXT.RAW.raw-processor", "$JS.ACK.RAW.raw-processor.1.1.1.1.1.1"):
        await nc.publish(subject, b"x")
        await nc.flush()
        await errors.wait_for(f'(?i)permissions violation for publish to "{re.escape(subject)}"')
