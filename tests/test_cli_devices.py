"""`pulsestack devices import|export|list --json` against the real stack: the round trip, bad lines named by
number with nothing stored for them, an idempotent rerun, an import killed midway and completed by a rerun
(the ingesters' registry bucket matching the table each time), and the 0600 key file."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import stat
import sys
from pathlib import Path

import asyncpg
import orjson
from nats.aio.client import Client as NATS

from pulsestack import keys
from pulsestack.bus.topology import REGISTRY_BUCKET
from pulsestack.registry.membership import Membership, device_number
from pulsestack_cli.local import LocalStack
from tests.helpers import unique_number
from tests.test_cli_errors import cli, servers

HEADER = "protocol,device_id,label,timezone,pulse_weight,daily_limit"


def env(stack: LocalStack) -> dict[str, str]:
    return {**servers(stack), "PULSESTACK_DEVICE_MASTER_KEY_FILE": str(stack.master_key_file)}


def fleet(count: int) -> tuple[list[str], list[str]]:
    """Ids of `count` NB-IoT and `count` Sigfox devices no other test uses, in canonical form."""
    # unique_number grows with the tests run before it (into the millions in a whole suite) while Sigfox ids
    # have 32 bits: a slot of 5,000 ids among 100,000 (this module's few calls are consecutive, never 100 apart).
    assert count <= 5_000
    slot = unique_number(0) % 100_000
    return ([str(357_000_000_000_000 + slot * 5_000 + i) for i in range(count)],
            [f"{0x60000000 + slot * 5_000 + i:X}" for i in range(count)])


def provisioning(nbiot: list[str], sigfox: list[str]) -> str:
    lines = [HEADER]
    for i, device in enumerate(nbiot):
        lines.append(f"nbiot,{device},\"Rue Haute {i}, Bruxelles\",Europe/Brussels,0.5,{400 + i}")
    for device in sigfox:
        lines.append(f"sigfox,{device},,,10,")
    return "\n".join(lines) + "\n"


Stored = dict[str, tuple[str | None, dict[str, object]]]


async def table(db: asyncpg.Connection, protocol: str, ids: list[str]) -> Stored:
    """Label and settings of those of `ids` that are registered."""
    rows = await db.fetch("SELECT device_id, label, settings FROM devices WHERE protocol = $1 AND device_id = ANY($2)",
                          protocol, ids)
    return {r["device_id"]: (r["label"], orjson.loads(r["settings"])) for r in rows}


async def bucket_matches_table(db: asyncpg.Connection, nc: NATS) -> None:
    """What an ingester loads from the bucket (its own reader) is exactly the table's enabled devices."""
    membership = Membership(["nbiot", "sigfox"])
    follower = asyncio.create_task(membership.follow(await nc.jetstream().key_value(REGISTRY_BUCKET)))
    await asyncio.wait_for(membership.ready.wait(), 30)
    follower.cancel()
    for protocol in ("nbiot", "sigfox"):
        enabled = [r["device_id"] for r in await db.fetch(
            "SELECT device_id FROM devices WHERE protocol = $1 AND NOT disabled", protocol)]
        assert membership.count(protocol) == len(enabled), protocol
        assert all(membership.contains(protocol, device_number(protocol, d)) for d in enabled), protocol


async def test_import_export_round_trip_and_rerun(stack: LocalStack, db: asyncpg.Connection, nc: NATS,
                                                  tmp_path: Path) -> None:
    nbiot, sigfox = fleet(30)
    source = tmp_path / "fleet.csv"
    source.write_text(provisioning(nbiot, sigfox))
    code, out, err = await cli("devices", "import", str(source), **env(stack))
    assert code == 0 and err == "", err
    assert "60 device(s) created, 0 updated, 0 unchanged, 0 bad line(s)" in out
    assert "keys: none written (derived from the master secret" in out
    stored = await table(db, "nbiot", nbiot)
    assert stored[nbiot[3]] == ("Rue Haute 3, Bruxelles",
                                {"timezone": "Europe/Brussels", "pulse_weight": 0.5, "daily_limit": 403})
    assert (await table(db, "sigfox", sigfox))[sigfox[0]] == (None, {"pulse_weight": 10})
    await bucket_matches_table(db, nc)

    code, out, err = await cli("devices", "export", "-", **env(stack))
    assert code == 0 and err.endswith("enabled device(s) written to standard output\n"), err
    mine = set(nbiot) | set(sigfox)
    exported = [line for line in out.splitlines() if line.split(",")[1] in mine or line == HEADER]
    assert exported == source.read_text().splitlines()

    before = await db.fetchval("SELECT max(updated_at) FROM devices")
    code, out, err = await cli("devices", "import", str(source), **env(stack))
    assert code == 0 and "0 device(s) created, 0 updated, 60 unchanged" in out, (out, err)
    assert await db.fetchval("SELECT max(updated_at) FROM devices") == before  # nothing written at all

    # A changed label and setting are taken, an empty cell leaves the value, the enabled state is kept.
    code, _, err = await cli("devices", "disable", "sigfox", sigfox[1], **env(stack))
    assert code == 0, err
    change = tmp_path / "change.csv"
    change.write_text(f"device_id,protocol,daily_limit,label\n{nbiot[0]},nbiot,900,\n{sigfox[1]},sigfox,,moved\n")
    code, out, err = await cli("devices", "import", str(change), **env(stack))
    assert code == 0 and "0 device(s) created, 2 updated, 0 unchanged" in out, (out, err)
    assert (await table(db, "nbiot", [nbiot[0]]))[nbiot[0]] == (
        "Rue Haute 0, Bruxelles", {"timezone": "Europe/Brussels", "pulse_weight": 0.5, "daily_limit": 900})
    assert await db.fetchval("SELECT disabled FROM devices WHERE protocol = 'sigfox' AND device_id = $1",
                             sigfox[1])
    assert (await table(db, "sigfox", [sigfox[1]]))[sigfox[1]][0] == "moved"
    await bucket_matches_table(db, nc)


async def test_bad_lines_are_named_and_nothing_is_stored_for_them(stack: LocalStack, db: asyncpg.Connection,
                                                                  tmp_path: Path) -> None:
    nbiot, sigfox = fleet(6)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"protocol,device_id,colour\nnbiot,{nbiot[0]},blue\n")
    code, out, err = await cli("devices", "import", str(unknown), **env(stack))
    assert code == 2 and out == ""
    assert err == ("pulsestack: line 1: unknown column 'colour'; known: protocol, device_id, label, timezone, "
                   "pulse_weight, daily_limit\n")
    assert await table(db, "nbiot", nbiot) == {}

    binary = tmp_path / "binary.csv"
    binary.write_bytes(f"protocol,device_id\nnbiot,{nbiot[0]}\n".encode() + b"nbiot,\xff\n")
    code, out, err = await cli("devices", "import", str(binary), **env(stack))
    assert code == 2 and err.startswith("pulsestack: not UTF-8 text after line ") and out == "", err
    assert await table(db, "nbiot", nbiot) == {}

    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([
        HEADER,
        f"nbiot,{nbiot[0]},a,,,",                   # line 2: good
        "nbiot,12AB,b,,,",                          # line 3: not a decimal id
        f"sigfox,{sigfox[0]},c,Mars/Olympus,,",     # line 4: unknown time zone
        f"nbiot,{nbiot[1]},d,,-2,",                 # line 5: negative pulse weight
        f"nbiot,{nbiot[1]},e,,,nan",                # line 6: NaN limit
        f"nbiot,{nbiot[0]},f,,,",                   # line 7: repeats line 2
        f"sigfox,{sigfox[1]},\"two",                # lines 8-9: one record across two lines, good
        "lines\",,,",
        f"lora,{nbiot[2]},g,,,",                    # line 10: unknown protocol
        f"sigfox,{sigfox[2]},h",                    # line 11: too few fields
        "",
        f"sigfox,{sigfox[3]},i,UTC,1,2",            # line 13: good
    ]) + "\n")
    code, out, err = await cli("devices", "import", str(bad), "--batch", "4", **env(stack))
    assert code == 2
    assert err.splitlines() == [
        "line 3: '12AB' is not an NB-IoT device id: a decimal number below 2^64 (an IMEI)",
        "line 4: unknown time zone 'Mars/Olympus'",
        "line 5: pulse_weight must be a positive number, not '-2'",
        "line 6: daily_limit must be a positive number, not 'nan'",
        f"line 7: nbiot device {nbiot[0]} already on line 2",
        "line 10: unknown protocol 'lora'",
        "line 11: 6 fields expected, 3 found",
        "pulsestack: 7 bad line(s) not stored (listed above with their line numbers)",
    ]
    assert "3 device(s) created, 0 updated, 0 unchanged, 7 bad line(s) not stored" in out
    assert await table(db, "nbiot", nbiot) == {nbiot[0]: ("a", {})}
    assert await table(db, "sigfox", sigfox) == {sigfox[1]: ("two\nlines", {}),
                                                 sigfox[3]: ("i", {"timezone": "UTC", "pulse_weight": 1,
                                                                   "daily_limit": 2})}


async def test_an_interrupted_import_is_completed_by_a_rerun(stack: LocalStack, db: asyncpg.Connection, nc: NATS,
                                                             tmp_path: Path) -> None:
    nbiot, sigfox = fleet(1500)
    source = tmp_path / "fleet.csv"
    source.write_text(provisioning(nbiot, sigfox))
    key_file = tmp_path / "keys.csv"
    batch = 100
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pulsestack_cli", "devices", "import", str(source), "--batch", str(batch),
        "--keys", str(key_file), env={**os.environ, **env(stack)}, stdout=asyncio.subprocess.DEVNULL)

    async def stored() -> int:
        return int(await db.fetchval(
            "SELECT count(*) FROM devices WHERE device_id = ANY($1)", nbiot + sigfox))

    while await stored() < 5 * batch:
        assert proc.returncode is None, "the import ended before it could be interrupted"
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    partial = await stored()
    assert 0 < partial < 3000 and partial % batch == 0, partial  # whole batches, nothing of the one cut

    code, out, err = await cli("devices", "import", str(source), "--keys", str(key_file), **env(stack))
    assert code == 0, err
    assert f"{3000 - partial:,} device(s) created, 0 updated, {partial:,} unchanged" in out, out
    assert await stored() == 3000
    await bucket_matches_table(db, nc)

    # The key file: 0600, the keys of every NB-IoT device created across both runs (a batch's keys are on
    # disk before it commits, so the cut batch may appear twice, with the same key).
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    rows = list(csv.reader(io.StringIO(key_file.read_text())))
    assert rows[0] == ["protocol", "device_id", "key_version", "key"]
    written = {device: key for _, device, _, key in rows[1:]}
    assert written == {d: keys.derive(stack.master_key, "nbiot", d).hex() for d in nbiot}
    code, out, _ = await cli("devices", "import", str(source), "--keys", str(key_file), **env(stack))
    assert code == 0 and "0 NB-IoT key(s) appended" in out
    assert len(key_file.read_text().splitlines()) == len(rows)


async def test_list_json_is_one_object_per_line(stack: LocalStack, tmp_path: Path) -> None:
    nbiot, _ = fleet(3)
    source = tmp_path / "three.csv"
    source.write_text(provisioning(nbiot, []))
    assert (await cli("devices", "import", str(source), **env(stack)))[0] == 0
    code, out, _ = await cli("devices", "list", "--protocol", "nbiot", "--all", "--json", **env(stack))
    assert code == 0
    listed = {d["device_id"]: d for d in map(orjson.loads, out.splitlines())}
    assert listed[nbiot[2]] == {"protocol": "nbiot", "device_id": nbiot[2], "key_version": 0,
                                "label": "Rue Haute 2, Bruxelles", "disabled": False,
                                "settings": {"timezone": "Europe/Brussels", "pulse_weight": 0.5, "daily_limit": 402}}
