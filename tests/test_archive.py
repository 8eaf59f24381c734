"""WAL archiving, base backups and point-in-time recovery (pulsestack/store/archive.py, docs/durability.md
"WAL archiving and base backups").

Real parts: a PostgreSQL 18 of its own archiving through `python -m pulsestack.store.archive wal-archive` into
moto's S3 server on loopback, base backups by its own pg_basebackup; readings reach the live stack through NB-IoT
datagrams and are stored into the archived database by `pulsestack replay` (the raw stage's write). A base
backup, readings, a target time, more readings; the restore of the target time holds exactly the readings
committed before it, and `replay --since` brings back the rest from RAW_REPLAY, each once.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from boto3.s3.transfer import TransferConfig
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry, generate_latest

from pulsestack.config import ConfigError
from pulsestack.store import archive
from pulsestack.store.migrate import bootstrap_owner, migrate
from pulsestack_cli.local import OWNER, LocalStack, with_user
from pulsestack_cli.localstack import (
    PG_SYSTEM_USER,
    Postgres,
    S3StandIn,
    free_port,
    interpreter_reachable,
    postgres_binaries,
    wait_for_port,
)
from tests.helpers import UdpDevice, eventually, now_aligned, register, unique_number
from tests.ops.test_monitoring import check_scraped_metric_names
from tests.test_metrics_scrape import exposition_names
from tests.test_replay import contents, copied, replay, settled

BUCKET = "pulsestack-archive"


@given(name=st.from_regex(r"[0-9A-F]{24}", fullmatch=True), data=st.binary(max_size=4096))
def test_a_segment_decrypts_only_under_its_own_name_and_key(name: str, data: bytes) -> None:
    key, other_key = os.urandom(32), os.urandom(32)
    blob = archive.encrypt_segment(key, name, data)
    assert archive.decrypt_segment(key, name, blob) == data
    assert len(data) < 16 or data not in blob  # shorter ones may occur in random bytes
    renamed = name[:-1] + ("0" if name[-1] != "0" else "1")
    for wrong_key, wrong_name in ((other_key, name), (key, renamed)):
        with pytest.raises(archive.ArchiveError, match="does not decrypt"):
            archive.decrypt_segment(wrong_key, wrong_name, blob)
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    with pytest.raises(archive.ArchiveError, match="does not decrypt"):
        archive.decrypt_segment(key, name, bytes(flipped))


def read_from(blob: bytes) -> Callable[[int], bytes]:
    stream = io.BytesIO(blob)
    return stream.read


@given(chunks=st.lists(st.binary(max_size=300), max_size=8), frame_bytes=st.integers(1, 64),
       cut=st.integers(0, 10_000), data=st.data())
def test_a_base_backup_decrypts_whole_or_not_at_all(
    chunks: list[bytes], frame_bytes: int, cut: int, data: st.DataObject
) -> None:
    """The sealed frames give back the tar's bytes under their own backup's name and key only; a copy cut off
    anywhere, one byte altered anywhere, or bytes added after the last frame are refused, never read as a
    shorter backup."""
    key = os.urandom(32)
    name = "pulsestack-20261206T070000Z"
    blob = b"".join(archive.encrypt_stream(key, name, chunks, frame_bytes=frame_bytes))
    plain = b"".join(chunks)
    assert b"".join(archive.decrypt_stream(key, name, read_from(blob))) == plain
    assert len(plain) < 16 or plain not in blob
    damaged = [blob[:cut % len(blob)], blob + b"\0"]
    at = data.draw(st.integers(0, len(blob) - 1))
    damaged.append(blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1:])
    for wrong in damaged:
        with pytest.raises(archive.ArchiveError, match=f"base backup {name}"):
            b"".join(archive.decrypt_stream(key, name, read_from(wrong)))
    for other_key, other_name in ((os.urandom(32), name), (key, "pulsestack-20261206T070001Z")):
        with pytest.raises(archive.ArchiveError, match="does not decrypt"):
            b"".join(archive.decrypt_stream(other_key, other_name, read_from(blob)))


def test_a_restore_inflates_a_frame_of_zeros_in_pieces() -> None:
    """Zeros compress a thousandfold: one sealed frame of a few KiB may hold 8 MiB of empty pages, which a
    restore must not take into memory at once."""
    key, zeros = os.urandom(32), bytes(1 << 20)
    blob = b"".join(archive.encrypt_stream(key, "zeros", (zeros for _ in range(8))))
    assert len(blob) < 64 << 10
    pieces = list(archive.decrypt_stream(key, "zeros", read_from(blob)))
    assert sum(map(len, pieces)) == 8 << 20 and max(map(len, pieces)) <= archive.READ_BYTES


@given(chunks=st.lists(st.binary(max_size=40), max_size=30), size=st.integers(1, 100))
def test_an_upload_stream_reads_whole_until_its_end(chunks: list[bytes], size: int) -> None:
    """boto3 takes a short read for the end of a stream of unknown length (see StreamReader)."""
    reader = archive.StreamReader(chunks)
    plain = b"".join(chunks)
    reads = list(iter(lambda: reader.read(size), b""))
    assert b"".join(reads) == plain and reader.total == len(plain)
    assert all(len(r) == size for r in reads[:-1])


backup_ends = st.lists(st.integers(0, 40 * 86_400), max_size=12, unique=True).map(sorted)


def catalogue_of(ends: list[int], move_at: int = 0) -> list[archive.Backup]:
    """Backups ending at `ends`; from backup `move_at` on, of a second database system (a move by dump and
    restore) whose segment numbers start again."""
    return [archive.Backup(f"pulsestack-{i:03d}", "1" if i < move_at else "2",
                           f"00000001000000{(i if i < move_at else i - move_at):010X}", end - 60.0, float(end), 1)
            for i, end in enumerate(ends)]


@given(ends=backup_ends, target=st.integers(0, 40 * 86_400))
def test_a_restore_starts_from_the_newest_backup_that_ended_before_its_target(ends: list[int], target: int) -> None:
    found = catalogue_of(ends)
    at = datetime.fromtimestamp(target, UTC)
    before = [b for b in found if b.end_time <= target]
    if before:
        assert archive.choose_backup(found, at, "auto") == before[-1]
    else:
        with pytest.raises(archive.ArchiveError, match="no base backup" if found else "holds no complete"):
            archive.choose_backup(found, at, "auto")
    if found:
        assert archive.choose_backup(found, None, "auto") == archive.choose_backup(found, at, "latest") == found[-1]
        assert archive.choose_backup(found, at, found[0].name) == archive.choose_backup(found, at, "oldest")


@given(ends=backup_ends, move_at=st.integers(0, 12), now=st.integers(0, 50 * 86_400), window=st.integers(1, 14))
def test_the_retention_keeps_every_point_of_the_recovery_window_restorable(
    ends: list[int], move_at: int, now: int, window: int
) -> None:
    """Every moment of the last `window` days that some backup ended before stays restorable: the backup a
    restore of it would choose is kept, with its system's WAL from its first segment on; the newest is never
    deleted, and a system none of whose backups is kept loses its WAL."""
    found = catalogue_of(ends, move_at)
    kept, gone = archive.expired(found, window, now)
    assert sorted(kept + gone, key=lambda b: b.end_time) == found
    if found:
        assert kept[-1] == found[-1]
    floors = archive.wal_floors(found, kept)
    for moment in range(now - window * 86_400, now + 1, 3_600):
        if any(b.end_time <= moment for b in found):
            chosen = archive.choose_backup(found, datetime.fromtimestamp(moment, UTC), "auto")
            assert chosen in kept
            first = f"wals/{chosen.systemid}/{chosen.begin_wal[:16]}/{chosen.begin_wal}"
            assert not archive.expired_wal(first, floors)
    for system in {b.systemid for b in found} - {b.systemid for b in kept}:
        assert archive.expired_wal(f"wals/{system}/00000001.history", floors)
    assert not archive.expired_wal("wals/3/000000010000000000000001", floors)  # no backup yet


@pytest.mark.parametrize(("text", "says"), [
    ("not base64!", "it is not base64"),
    (base64.b64encode(b"short").decode(), "it holds 5"),
])
def test_a_bad_key_is_named(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=f"PULSESTACK_ARCHIVE_KEY_FILE must hold 32 bytes in base64, {says}"):
        archive.parse_key(text)


@pytest.mark.parametrize(("args", "code", "says"), [
    (["wal-archive", "pg_wal/000000010000000000000001"], 1,
     "pulsestack archive wal-archive: PULSESTACK_ARCHIVE_URL is required"),
    # Not 1, "not in the archive", which would end recovery at a point nobody chose.
    (["wal-restore", "000000010000000000000001", "pg_wal/RECOVERYXLOG"], archive.ABORT_RECOVERY,
     "pulsestack archive wal-restore: PULSESTACK_ARCHIVE_URL is required"),
])
def test_an_unconfigured_command_says_what_is_missing(
    args: list[str], code: int, says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in os.environ if n.startswith("PULSESTACK_ARCHIVE_")]:
        monkeypatch.delenv(name)
    assert archive.main(args) == code
    assert capsys.readouterr().err == says + "\n"


def test_the_settings_as_postgres_options_are_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    """pulsestack/postgres's entry point passes them as `-c NAME=VALUE`: NUL-ended, so a value may hold spaces."""
    assert archive.main(["settings", "--options"]) == 0
    options = capsys.readouterr().out
    assert options.endswith("\0")
    assert dict(o.split("=", 1) for o in options.split("\0")[:-1]) == archive.archive_settings()


def test_the_scheduler_without_an_archive_serves_no_backup_series_and_stays_up() -> None:
    """A stack deployed without PULSESTACK_ARCHIVE_URL: archive-scheduler stays healthy (its metrics answer) and
    says why it backs nothing up, rather than restarting every minute; WalArchivingOff alone alerts."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSESTACK_ARCHIVE_")}
    env["PULSESTACK_ARCHIVE_METRICS_PORT"] = str(port)
    scheduler = subprocess.Popen([sys.executable, "-m", "pulsestack.store.archive", "schedule"], env=env,
                                 stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "pulsestack_postgres_base_backup" not in body
        assert scheduler.poll() is None
    finally:
        scheduler.terminate()
        _, err = scheduler.communicate(timeout=10)
    assert "PULSESTACK_ARCHIVE_URL is not set; no base backups" in err


@pytest.mark.parametrize(("text", "says"), [
    ("yesterday", "argument --target-time: 'yesterday' is not an ISO time (2026-12-05T10:20:00Z)"),
    ("2026-12-05T10:20:00", "argument --target-time: '2026-12-05T10:20:00' needs a time zone (Z or +HH:MM)"),
])
def test_an_unusable_target_time_is_named(text: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        archive.main(["restore", "/nonexistent", "--target-time", text])
    assert exit_.value.code == 2 and capsys.readouterr().err.rstrip().endswith(says)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3StandIn]:
    """moto in server mode on loopback, with the archive's bucket."""
    server = S3StandIn(BUCKET)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass
class Archived:
    postgres: Postgres
    config: archive.ArchiveConfig
    workdir: Path


def owned_by_server(path: Path) -> None:
    """A restored data folder belongs to the server's own user when the tests run as root."""
    if os.geteuid() == 0:
        shutil.chown(path, PG_SYSTEM_USER)
        for inner in path.rglob("*"):
            shutil.chown(inner, PG_SYSTEM_USER)


@pytest.fixture
async def archived(s3: S3StandIn, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Archived]:
    """A migrated PostgreSQL of its own whose archive command uploads to the S3 stand-in; the archive's
    settings in this process's environment, which the server and its archive command inherit."""
    # Not under pytest's temporary root (0700): PostgreSQL runs as its own user when the tests run as root.
    workdir = Path(tempfile.mkdtemp(prefix="pulsestack-archive-"))
    workdir.chmod(0o755)
    for name, value in s3.archive_environment(workdir / "secrets", f"test-{os.getpid()}-{time.monotonic_ns()}").items():
        monkeypatch.setenv(name, value)
    interpreter_reachable()
    postgres = Postgres(workdir / "pg", settings=archive.archive_settings())
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(postgres.port))
    monkeypatch.setenv("PGUSER", "postgres")
    # pg_basebackup and psql of the server's major, as in its image (the machine may have an older client).
    monkeypatch.setenv("PATH", f"{postgres_binaries()}{os.pathsep}{os.environ['PATH']}")
    await asyncio.to_thread(postgres.start)
    try:
        conn = await asyncpg.connect(postgres.url())
        try:
            await bootstrap_owner(conn)
        finally:
            await conn.close()
        conn = await asyncpg.connect(with_user(postgres.url(), OWNER))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield Archived(postgres, archive.ArchiveConfig.from_env(), workdir)
    finally:
        await asyncio.to_thread(postgres.stop, "immediate")
        shutil.rmtree(workdir, ignore_errors=True)


async def fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def copy_devices(live_url: str, url: str, devices: list[str]) -> None:
    """The registry rows of the test's devices, as the archived database's own registration would make them."""
    source, target = await asyncpg.connect(live_url), await asyncpg.connect(url)
    try:
        rows = await source.fetch("SELECT * FROM devices WHERE protocol = 'nbiot' AND device_id = ANY($1)", devices)
        await target.copy_records_to_table("devices", records=[tuple(r) for r in rows], columns=list(rows[0].keys()))
    finally:
        await source.close()
        await target.close()


async def archived_through_now(url: str) -> None:
    """Closes the current WAL segment and waits until the archiver has uploaded it."""
    segment = await fetchval(url, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    await fetchval(url, "SELECT pg_switch_wal()")

    async def uploaded() -> bool:
        last = await fetchval(url, "SELECT last_archived_wal FROM pg_stat_archiver")
        return last is not None and str(last) >= str(segment)

    await eventually(uploaded, timeout=60, interval=0.2)


async def test_point_in_time_restore_holds_what_was_committed_before_the_target_and_replay_brings_the_rest(
    stack: LocalStack, nc: NATS, archived: Archived
) -> None:
    numbers = [unique_number(7_400_000) for _ in range(3)]
    devices = [str(n) for n in numbers]
    await register(stack, "nbiot", devices)
    url = archived.postgres.url()
    await copy_devices(stack.database_url, url, devices)
    meters = [UdpDevice(stack, n) for n in numbers]
    start = now_aligned(3600)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    async def stored_by_replay(seqs: range) -> dict[str, object]:
        """Sends readings `seqs` through the live path, then stores them in the archived database as a replay
        from RAW_REPLAY does: the raw stage's own write."""
        before = await copied(nc)
        for seq in seqs:
            for meter in meters:
                assert await meter.send(seq=seq, period_end=start + seq * 3600, index=1000 + seq * 10,
                                        attempts=3) == (seq, 0)
        await settled(nc, before)
        report, _ = await replay(url, stack, since)
        return report

    backup_started = time.time()
    await asyncio.to_thread(archive.base_backup, archived.config, True)
    registry = CollectorRegistry()
    metrics = archive.BackupMetrics(registry)
    await asyncio.to_thread(archive.scheduled_round, archived.config, metrics)  # the backup is new: none taken
    last_end = registry.get_sample_value("pulsestack_postgres_base_backup_last_end_timestamp_seconds")
    assert last_end is not None and backup_started - 1 <= last_end <= time.time()
    assert len(await asyncio.to_thread(archive.backups, archived.config)) == 1
    assert check_scraped_metric_names(exposition_names(generate_latest(registry).decode()),
                                      exporters={"archive-scheduler"}) == []
    first = await stored_by_replay(range(1, 3))
    assert first["stored"] == 6, first
    target = await fetchval(url, "SELECT clock_timestamp()")
    assert isinstance(target, datetime)
    second = await stored_by_replay(range(3, 5))
    assert second["stored"] == 6 and second["duplicates"] == 6, second
    everything = await contents(url, devices)
    assert len(everything["readings"]) == 12
    await archived_through_now(url)
    await asyncio.to_thread(archived.postgres.stop, "immediate")  # the node is gone

    restored_dir = archived.workdir / "restored"
    restored_dir.mkdir(mode=0o755)
    # The backup in the bucket is sealed: under another key the restore names the first frame and stops.
    with pytest.raises(archive.ArchiveError, match="frame 0 in the archive does not decrypt"):
        await asyncio.to_thread(archive.restore, dataclasses.replace(archived.config, key=os.urandom(32)),
                                archived.workdir / "wrong-key", target)
    await asyncio.to_thread(archive.restore, archived.config, restored_dir / "data", target)
    owned_by_server(restored_dir / "data")
    restored = Postgres(restored_dir, settings=archive.archive_settings())
    await asyncio.to_thread(restored.start)
    try:
        restored_url = restored.url()

        async def promoted() -> bool:
            return await fetchval(restored_url, "SELECT NOT pg_is_in_recovery()") is True

        await eventually(promoted, timeout=60, interval=0.2)
        at_target = await contents(restored_url, devices)
        assert sorted(row[2] for row in at_target["readings"]) == [1, 1, 1, 2, 2, 2]
        assert at_target["readings"] == [row for row in everything["readings"] if row[2] in (1, 2)]

        after, err = await replay(restored_url, stack, since)
        assert after["stored"] == 6 and after["duplicates"] == 6 and after["not_covered_from"] is None, (after, err)
        assert await contents(restored_url, devices) == everything
    finally:
        for meter in meters:
            meter.close()
        await asyncio.to_thread(restored.stop, "immediate")


async def test_archiving_into_a_missing_bucket_counts_failures(archived: Archived) -> None:
    """What WalArchiveFailing watches (pulsestack_postgres_wal_archive_failures_total) rises when the archive
    command cannot upload, and the scheduler counts a base backup it could not take."""
    registry = CollectorRegistry()
    nowhere = dataclasses.replace(archived.config, destination="s3://no-such-bucket/db")
    await asyncio.to_thread(archive.scheduled_round, nowhere, archive.BackupMetrics(registry))
    assert registry.get_sample_value("pulsestack_postgres_base_backup_failures_total") == 1
    assert registry.get_sample_value("pulsestack_postgres_base_backup_last_end_timestamp_seconds") == 0
    # A command-line setting, which ALTER SYSTEM does not override: the server restarts with the other one.
    postgres = archived.postgres
    assert await fetchval(postgres.url(), "SELECT failed_count FROM pg_stat_archiver") == 0
    await asyncio.to_thread(postgres.stop)
    command = postgres.settings["archive_command"]
    postgres.settings["archive_command"] = f"PULSESTACK_ARCHIVE_URL=s3://no-such-bucket/db {command}"
    await asyncio.to_thread(postgres.resume)
    conn = await asyncpg.connect(postgres.url())
    try:
        await conn.execute("CREATE TABLE filler (n int); INSERT INTO filler VALUES (1)")
        await conn.fetchval("SELECT pg_switch_wal()")

        async def failed() -> bool:
            return int(await conn.fetchval("SELECT failed_count FROM pg_stat_archiver")) > 0

        await eventually(failed, timeout=60, interval=0.2)
    finally:
        await conn.close()


async def test_a_new_database_system_under_the_same_archive_gets_its_own_base_backup_at_once(
    archived: Archived, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move by dump and restore (remove-node.yml, migrate-node-type.yml) initialises a new database system that
    archives where the old one did: the old one's fresh backup restores nothing of the new one's, so the scheduler
    takes the new one's first backup at once instead of a day later."""
    await asyncio.to_thread(archive.base_backup, archived.config, True)
    metrics = archive.BackupMetrics(CollectorRegistry())
    await asyncio.to_thread(archive.scheduled_round, archived.config, metrics)
    assert len(await asyncio.to_thread(archive.backups, archived.config)) == 1  # the old system's is fresh
    successor = Postgres(archived.workdir / "successor", settings=archive.archive_settings())
    monkeypatch.setenv("PGPORT", str(successor.port))
    await asyncio.to_thread(successor.start)
    try:
        systemid = await asyncio.to_thread(archive.server_systemid)
        await asyncio.to_thread(archive.scheduled_round, archived.config, metrics)
        listed = await asyncio.to_thread(archive.backups, archived.config)
        assert [b.systemid for b in listed][-1] == systemid and len(listed) == 2, listed
    finally:
        await asyncio.to_thread(successor.stop, "immediate")


async def test_the_retention_deletes_expired_backups_unfinished_ones_and_the_wal_only_they_needed(
    archived: Archived,
) -> None:
    url = archived.postgres.url()
    bucket = archive.ArchiveBucket(archived.config)
    first = await asyncio.to_thread(archive.base_backup, archived.config, True)
    await asyncio.to_thread(time.sleep, 1)  # backups are named by the second
    await fetchval(url, "SELECT pg_logical_emit_message(false, 'test', 'WAL after the first backup')")
    await archived_through_now(url)
    second = await asyncio.to_thread(archive.base_backup, archived.config, True)
    assert [b.name for b in await asyncio.to_thread(archive.backups, archived.config)] == [first.name, second.name]
    # What a scheduler stopped midway leaves: the data of a backup with no catalogue entry.
    await asyncio.to_thread(bucket.put, f"base/{first.name[:-1]}A/data", b"unfinished")
    wals = await asyncio.to_thread(lambda: list(bucket.keys("wals/")))
    assert {key.split("/")[1] for key in wals} == {second.systemid}  # each system's WAL in a folder of its own
    assert any(key.rsplit("/", 1)[1][8:24] < second.begin_wal[8:24] for key in wals)

    # Three days on with a one-day window: both ended before it, so only the newer one is kept.
    await asyncio.to_thread(archive.apply_retention, bucket, 1, time.time() + 3 * 86_400)
    assert [b.name for b in await asyncio.to_thread(archive.backups, archived.config)] == [second.name]
    left = await asyncio.to_thread(lambda: list(bucket.keys("")))
    assert {key.split("/")[1] for key in left if key.startswith("base/")} == {second.name}
    segments = [key.rsplit("/", 1)[1] for key in left if key.startswith("wals/")]
    assert segments and all(name[8:24] >= second.begin_wal[8:24] for name in segments if len(name) >= 24)


def test_a_stream_past_the_threshold_is_uploaded_in_parts_of_the_size_asked(s3: S3StandIn) -> None:
    """A base backup is one stream of unknown length: boto3 must see whole parts (S3 refuses parts under 5 MiB
    but the last) and upload them as they come, never the whole stream in one request from memory."""
    config = archive.ArchiveConfig(
        destination=f"s3://{BUCKET}/db", server=f"test-{os.getpid()}-{time.monotonic_ns()}", endpoint=s3.endpoint,
        access_key_id=S3StandIn.ACCESS[0], secret_access_key=S3StandIn.ACCESS[1], region=S3StandIn.REGION,
        key=os.urandom(32), recovery_window_days=7, backup_interval=86_400, server_side_encryption=None)
    bucket = archive.ArchiveBucket(config)
    part = 5 << 20
    data = os.urandom(2 * part + 12345)
    chunks = [data[i:i + 7000] for i in range(0, len(data), 7000)]  # frames far smaller than a part
    transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=2)
    assert bucket.upload("base/parts/data", chunks, transfer) == len(data)
    head = bucket.client.head_object(Bucket=bucket.bucket, Key=bucket.root + "base/parts/data")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag ends with its number of parts
    assert bucket.get("base/parts/data") == data
