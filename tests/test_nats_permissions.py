"""The stack's NATS users, against a real nats-server running the stack's own configuration (tests/stack_nats.py).

Each service may subscribe to its own inboxes only (the prefix connect_nats gives it), never to another's, and
may publish only its own subjects.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.msg import Msg

from ingest_http.routes import ROUTES
from processors.raw_stage import RawStage
from pulsestack import services
from pulsestack.alerts.changes import KINDS
from pulsestack.bus.topology import NOTIFIER_CONSUMER, alert_subject, dead_subject, quarantine_subject, raw_subject
from pulsestack.service import inbox_prefix
from pulsestack.wire.nbiot import PROTOCOL as NBIOT
from tests.stack_nats import StackNats, stack_nats

# The services that use the bus, each as the NATS user of its name.
SERVICES = tuple(s.nats_user for s in services.SERVICES if s.nats_user)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackNats]:
    with stack_nats(tmp_path_factory.mktemp("nats-conf")) as running:
        yield running


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
async def connect(server: StackNats) -> AsyncIterator[object]:
    clients: list[nats.NATS] = []

    async def as_user(user: str, errors: Errors | None = None, prefix: str | None = None) -> nats.NATS:
        nc = await server.connect(user, allow_reconnect=False, inbox_prefix=prefix or inbox_prefix(user),
                                  error_cb=(errors or Errors()).callback)
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


# What each service's code publishes, named by the bus topology's own functions: a subject renamed there and
# not in deploy/nats/nats-server.conf would be refused in production.
PUBLISHED = {
    "ingest-udp": [raw_subject(NBIOT), quarantine_subject("ingest")],
    "ingest-http": [*(raw_subject(route.protocol) for route in ROUTES), quarantine_subject("ingest")],
    "raw-processor": [*(alert_subject(kind) for kind in KINDS), quarantine_subject(RawStage.name),
                      dead_subject(RawStage.name)],
    "alerting": [*(alert_subject(kind) for kind in KINDS), dead_subject(NOTIFIER_CONSUMER)],
}


@pytest.mark.parametrize("user", sorted(PUBLISHED))
async def test_a_service_may_publish_every_subject_the_topology_gives_it(  # type: ignore[no-untyped-def]
    connect, user: str
) -> None:
    errors = Errors()
    nc = await connect(user, errors)
    admin = await connect("admin", errors)
    received: set[str] = set()

    async def arrived(msg: Msg) -> None:
        received.add(msg.subject)

    subjects = set(PUBLISHED[user])
    for subject in subjects:
        await admin.subscribe(subject, cb=arrived)
    # Sent again until each arrives: nats-py's flush can return before the server has the subscriptions.
    for _ in range(50):
        for subject in subjects - received:
            await nc.publish(subject, b"x")
        await nc.flush()
        await asyncio.sleep(0.1)
        if received == subjects:
            break
    assert received == subjects, errors.seen
