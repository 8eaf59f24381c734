"""Continuous WAL archiving, base backups and point-in-time restores to S3-compatible storage
(docs/durability.md, "WAL archiving and base backups").

Nothing leaves the server unencrypted: every WAL segment is compressed and encrypted (AES-256-GCM, the key from
`PULSESTACK_ARCHIVE_KEY_FILE`) before upload, and every base backup (`pg_basebackup`'s tar) is compressed and
sealed as it streams, frame by frame. This module also owns the bucket's layout, the backup catalogue and the
retention; boto3 moves the bytes. Every setting comes from the environment (`ArchiveConfig.from_env`), so
PostgreSQL's `archive_command` and `restore_command` are the same short lines everywhere:

    python -m pulsestack.store.archive wal-archive %p
    python -m pulsestack.store.archive wal-restore %f %p

The bucket, under PULSESTACK_ARCHIVE_URL's prefix and the server's folder (PULSESTACK_ARCHIVE_SERVER):

    wals/<system>/<timeline and log>/<segment>  each WAL segment (and backup label), encrypted whole
    wals/<system>/<timeline>.history            a timeline's history, encrypted whole
    base/<backup>/data                          a base backup's tar, compressed and sealed in frames
    base/<backup>/backup.json                   its catalogue entry, written last: a backup without one is not

<system> is the database system identifier (initdb draws it; a restore keeps it).

Only the standard library, boto3, `cryptography` and `prometheus-client` are imported, so the PostgreSQL image
needs no more than the `archive` extra; `pg_basebackup`, `psql` and `tar` come with the server's image.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import io
import json
import os
import shlex
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from pulsestack.config import ConfigError, env_int, env_str, secret

# A WAL file of ours, format 1: MAGIC, a random 96-bit nonce, then AES-256-GCM of the zlib-compressed segment with
# MAGIC and the segment's name as associated data, so a segment stored under another name does not decrypt.
MAGIC = b"PSWAL\x01"
NONCE_BYTES = 12
KEY_BYTES = 32
TAG_BYTES = 16
# zlib's fastest level: a segment closed by archive_timeout is mostly zeros, which any level removes, and the
# archiver must keep up with the write rate on one core.
COMPRESSION_LEVEL = 1

# A base backup of ours, format 1: BASE_MAGIC, then frames of [length u32][final u8][nonce][AES-256-GCM of the
# next FRAME_BYTES of the zlib-compressed tar]. Each frame's associated data is BASE_MAGIC, the backup's name,
# the frame's number and its final flag: frames reordered, dropped, moved to another backup or cut off after a
# non-final one do not decrypt or end early, which the restore names.
BASE_MAGIC = b"PSBASE\x01"
FRAME_BYTES = 4 << 20
FRAME_HEADER = struct.Struct(">IB")
READ_BYTES = 1 << 20
# boto3's multipart upload of a stream of unknown length: parts of 64 MiB, two at a time and at most two read
# ahead of their upload (≈ 130 MiB of memory; boto3 would buffer ten), up to S3's 10,000 parts, so a compressed
# base backup of up to 640 GiB.
PART_BYTES = 64 << 20
UPLOAD = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=2)
UPLOAD.max_in_memory_upload_chunks = 2  # s3transfer's setting, which boto3's constructor does not take

# Segments close at least this often while anything is written (an idle server closes none): the archive lags
# the database by at most this plus one upload. 5 min keeps WalArchiveStale's 15 min far off and the replay from
# RAW short, at most 288 segments a day (16 MiB each before compression, mostly zeros when nearly empty).
ARCHIVE_TIMEOUT_SECONDS = 300
DEFAULT_RECOVERY_WINDOW_DAYS = 7
DEFAULT_BACKUP_INTERVAL_SECONDS = 86_400
DEFAULT_METRICS_PORT = 9188

# restore_command's exit codes: PostgreSQL takes 1 as "not in the archive" (the end of recovery, or the next
# timeline); above 125 it aborts recovery. A segment that exists but cannot be fetched or decrypted must abort:
# read as "not in the archive" it would end recovery early, at a point nobody chose.
NOT_ARCHIVED = 1
ABORT_RECOVERY = 255


class ArchiveError(RuntimeError):
    """S3, pg_basebackup, psql or tar failed, or what the archive holds is not ours; the message says which."""


def parse_key(text: str, name: str = "PULSESTACK_ARCHIVE_KEY_FILE") -> bytes:
    """The archive key: 32 random bytes, base64 (`head -c 32 /dev/urandom | base64`)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as exc:
        raise ConfigError(f"{name} must hold 32 bytes in base64, it is not base64: {exc}") from exc
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{name} must hold 32 bytes in base64, it holds {len(key)}")
    return key


def encrypt_segment(key: bytes, name: str, data: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, zlib.compress(data, COMPRESSION_LEVEL), MAGIC + name.encode())


def decrypt_segment(key: bytes, name: str, blob: bytes) -> bytes:
    if not blob.startswith(MAGIC):
        raise ArchiveError(f"{name} in the archive is not a segment this module encrypted (no {MAGIC!r} header)")
    nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
    try:
        plain = AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], MAGIC + name.encode())
    except InvalidTag:
        raise ArchiveError(f"{name} in the archive does not decrypt: another key, another segment's bytes,"
                           " or altered") from None
    return zlib.decompress(plain)


def frame_data(name: str, index: int, final: bool) -> bytes:
    return BASE_MAGIC + name.encode() + struct.pack(">QB", index, final)


def seal_frame(aead: AESGCM, name: str, index: int, plain: bytes, final: bool) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    sealed = aead.encrypt(nonce, plain, frame_data(name, index, final))
    return FRAME_HEADER.pack(len(sealed), final) + nonce + sealed


def encrypt_stream(key: bytes, name: str, chunks: Iterable[bytes], frame_bytes: int = FRAME_BYTES) -> Iterator[bytes]:
    """Base backup `name`'s bytes (`chunks`, as they come), compressed and sealed in frames of `frame_bytes`; the
    last frame is flagged final, so a copy cut off at a frame's end is still told from a whole one."""
    aead = AESGCM(key)
    compressor = zlib.compressobj(COMPRESSION_LEVEL)
    pending = bytearray()
    index = 0
    yield BASE_MAGIC
    for chunk in chunks:
        pending += compressor.compress(chunk)
        while len(pending) >= frame_bytes:
            yield seal_frame(aead, name, index, bytes(pending[:frame_bytes]), final=False)
            del pending[:frame_bytes]
            index += 1
    pending += compressor.flush()
    yield seal_frame(aead, name, index, bytes(pending), final=True)


def inflate(decompressor: Any, data: bytes) -> Iterator[bytes]:
    """`data` decompressed in pieces of at most READ_BYTES: a frame of zeros (empty pages, unused files)
    inflates a thousandfold, 4 GiB from one 4 MiB frame if taken at once."""
    while True:
        piece = decompressor.decompress(data, READ_BYTES)
        yield piece
        data = decompressor.unconsumed_tail
        if not data and len(piece) < READ_BYTES:
            return


def decrypt_stream(key: bytes, name: str, read: Callable[[int], bytes]) -> Iterator[bytes]:
    """The plain bytes of base backup `name` from its sealed frames, read through `read(n)`; raises ArchiveError
    at the first frame that is not this backup's under this key, and when the frames end before the final one."""

    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            more = read(size - len(data))
            if not more:
                raise ArchiveError(f"base backup {name} in the archive is cut off: it ends before its last frame")
            data += more
        return data

    if exactly(len(BASE_MAGIC)) != BASE_MAGIC:
        raise ArchiveError(f"base backup {name} in the archive is not one this module encrypted"
                           f" (no {BASE_MAGIC!r} header)")
    aead = AESGCM(key)
    decompressor = zlib.decompressobj()
    index = 0
    while True:
        length, final = FRAME_HEADER.unpack(exactly(FRAME_HEADER.size))
        if length > FRAME_BYTES + TAG_BYTES:
            raise ArchiveError(f"base backup {name}'s frame {index} in the archive is altered (length {length})")
        nonce = exactly(NONCE_BYTES)
        try:
            plain = aead.decrypt(nonce, exactly(length), frame_data(name, index, bool(final)))
        except InvalidTag:
            raise ArchiveError(f"base backup {name}'s frame {index} in the archive does not decrypt: another key,"
                               " another backup's bytes, or altered") from None
        yield from inflate(decompressor, plain)
        if final:
            break
        index += 1
    if read(1):
        raise ArchiveError(f"base backup {name} in the archive has bytes after its last frame")
    yield decompressor.flush()
    if not decompressor.eof:
        raise ArchiveError(f"base backup {name} in the archive ends inside its compressed stream")


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """Where the archive is and how to reach it. PostgreSQL's connection for a base backup is libpq's own
    (`PGHOST`, `PGPORT`, `PGUSER`: the image's local socket and its superuser)."""

    destination: str  # s3://bucket/prefix
    server: str  # the folder of this database's backups and WAL under the destination
    endpoint: str | None
    access_key_id: str
    secret_access_key: str
    region: str | None
    key: bytes
    # Every point of the last this many days stays restorable: the backups that ended in it, the newest one
    # before it, and the WAL from the oldest of those on.
    recovery_window_days: int
    backup_interval: int
    # S3's server-side encryption (AES256, aws:kms) on top: the provider encrypts at rest what it received.
    server_side_encryption: str | None

    @classmethod
    def from_env(cls) -> ArchiveConfig:
        destination = env_str("PULSESTACK_ARCHIVE_URL")
        if not destination.startswith("s3://") or len(destination) <= len("s3://"):
            raise ConfigError(f"PULSESTACK_ARCHIVE_URL must be s3://BUCKET[/PREFIX], got {destination!r}")
        key_file = env_str("PULSESTACK_ARCHIVE_KEY_FILE")
        try:
            key_text = Path(key_file).read_text()
        except OSError as exc:
            raise ConfigError(f"PULSESTACK_ARCHIVE_KEY_FILE={key_file} cannot be read: {exc.strerror}") from exc
        interval = env_int("PULSESTACK_ARCHIVE_BACKUP_INTERVAL", DEFAULT_BACKUP_INTERVAL_SECONDS)
        if interval <= 0:
            raise ConfigError(f"PULSESTACK_ARCHIVE_BACKUP_INTERVAL must be positive seconds, got {interval}")
        window = env_int("PULSESTACK_ARCHIVE_RECOVERY_WINDOW_DAYS", DEFAULT_RECOVERY_WINDOW_DAYS)
        if window <= 0:
            raise ConfigError(f"PULSESTACK_ARCHIVE_RECOVERY_WINDOW_DAYS must be positive days, got {window}")
        return cls(
            destination=destination.rstrip("/"),
            server=env_str("PULSESTACK_ARCHIVE_SERVER", "pulsestack"),
            endpoint=os.environ.get("PULSESTACK_ARCHIVE_ENDPOINT") or None,
            access_key_id=secret("PULSESTACK_ARCHIVE_ACCESS_KEY_ID"),
            secret_access_key=secret("PULSESTACK_ARCHIVE_SECRET_ACCESS_KEY"),
            region=os.environ.get("PULSESTACK_ARCHIVE_REGION") or None,
            key=parse_key(key_text),
            recovery_window_days=window,
            backup_interval=interval,
            server_side_encryption=os.environ.get("PULSESTACK_ARCHIVE_SSE") or None,
        )


@contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """boto3's and S3's failures as ArchiveError, naming what was being done."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise ArchiveError(f"{what}: {exc}") from None


class StreamReader(io.RawIOBase):
    """A file boto3 can upload from, reading the chunks of an iterator; it counts the bytes read.

    Every read but the last is whole: boto3 takes a short read for the end of a stream of unknown length, so
    one of a few bytes would make it upload the whole backup in one request, read into memory, and short
    parts are below S3's minimum part size."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)
        self.pending = memoryview(b"")
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if not self.pending:
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                self.pending = memoryview(chunk)
                continue
            size = min(len(view) - filled, len(self.pending))
            view[filled:filled + size] = self.pending[:size]
            self.pending = self.pending[size:]
            filled += size
        self.total += filled
        return filled


class ArchiveBucket:
    """The archive's objects: the one place that speaks S3. Keys are relative to the URL's prefix and the
    server's folder."""

    def __init__(self, config: ArchiveConfig) -> None:
        self.bucket, _, prefix = config.destination[len("s3://"):].partition("/")
        self.root = "".join(f"{part.strip('/')}/" for part in (prefix, config.server) if part.strip("/"))
        self.client = boto3.client(
            "s3", endpoint_url=config.endpoint, region_name=config.region,
            aws_access_key_id=config.access_key_id, aws_secret_access_key=config.secret_access_key,
            config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}))
        self.extra = {"ServerSideEncryption": config.server_side_encryption} if config.server_side_encryption else {}

    def put(self, key: str, data: bytes) -> None:
        with s3_errors(f"uploading {key} to s3://{self.bucket}/{self.root}"):
            self.client.put_object(Bucket=self.bucket, Key=self.root + key, Body=data, **self.extra)

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is no such object."""
        with s3_errors(f"downloading {key} from s3://{self.bucket}/{self.root}"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self.root + key)["Body"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            data: bytes = body.read()
            return data

    def upload(self, key: str, chunks: Iterable[bytes], transfer: TransferConfig = UPLOAD) -> int:
        """A stream of unknown length as one object (a multipart upload past the threshold, aborted if `chunks`
        raises); its size."""
        reader = StreamReader(chunks)
        with s3_errors(f"uploading {key} to s3://{self.bucket}/{self.root}"):
            self.client.upload_fileobj(reader, self.bucket, self.root + key, ExtraArgs=self.extra or None,
                                       Config=transfer)
        return reader.total

    def reader(self, key: str) -> Callable[[int], bytes]:
        """read(n) over the object's bytes as they download."""
        with s3_errors(f"downloading {key} from s3://{self.bucket}/{self.root}"):
            body = self.client.get_object(Bucket=self.bucket, Key=self.root + key)["Body"]

        def read(size: int) -> bytes:
            with s3_errors(f"downloading {key} from s3://{self.bucket}/{self.root}"):
                data: bytes = body.read(size)
                return data

        return read

    def keys(self, folder: str) -> Iterator[str]:
        with s3_errors(f"listing s3://{self.bucket}/{self.root}{folder}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                              Prefix=self.root + folder):
                for item in page.get("Contents", []):
                    yield str(item["Key"])[len(self.root):]

    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects' limit
            batch = [{"Key": self.root + key} for key in keys[start:start + 1000]]
            with s3_errors(f"deleting from s3://{self.bucket}/{self.root}"):
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                raise ArchiveError(f"deleting from s3://{self.bucket}/{self.root}: {answer['Errors'][:3]}")


def is_segment(name: str) -> bool:
    """A WAL segment's name, or a name that starts with one (a backup label, a partial segment)."""
    return len(name) >= 24 and all(c in "0123456789ABCDEF" for c in name[:24])


def wal_key(system: str, name: str) -> str:
    """Where WAL file `name` of database system `system` goes: segments (and their backup labels and partials)
    by timeline and log, history files straight under the system's folder. A system of its own: one made by
    a move by dump and restore starts again at timeline 1's first segments, which must not replace the old
    system's while its backups are kept."""
    if is_segment(name):
        return f"wals/{system}/{name[:16]}/{name}"
    return f"wals/{system}/{name}"


def data_folder_system(folder: Path) -> str:
    """The database system identifier of the data folder (pg_control's first field, in the server's byte
    order): archive_command and restore_command run in it, a restored one carries its backup's."""
    return str(int.from_bytes((folder / "global" / "pg_control").read_bytes()[:8], sys.byteorder))


def archive_wal(config: ArchiveConfig, path: Path, system: str) -> None:
    """archive_command: the segment (or history or backup-label file) at `path`, encrypted, into the archive."""
    ArchiveBucket(config).put(wal_key(system, path.name),
                              encrypt_segment(config.key, path.name, path.read_bytes()))


def restore_wal(config: ArchiveConfig, name: str, path: Path, system: str) -> int:
    """restore_command: `name` from the archive, decrypted, at `path`; the exit code PostgreSQL expects."""
    blob = ArchiveBucket(config).get(wal_key(system, name))
    if blob is None:
        return NOT_ARCHIVED
    data = decrypt_segment(config.key, name, blob)
    # Whole or not at all: a command killed midway leaves no half-written segment where PostgreSQL looks.
    partial = path.with_name(path.name + ".pulsestack-partial")
    partial.write_bytes(data)
    partial.replace(path)
    return 0


def archive_settings() -> dict[str, str]:
    """The server's archiving settings (postgresql.conf lines or `-c` options); the archive itself is
    configured by the server's environment, which the archive command inherits."""
    return {
        "archive_mode": "on",
        "archive_command": f"{shlex.quote(sys.executable)} -m pulsestack.store.archive wal-archive %p",
        "archive_timeout": str(ARCHIVE_TIMEOUT_SECONDS),
    }


def recovery_settings(target_time: datetime | None) -> dict[str, str]:
    """A restored server's recovery: every archived segment up to `target_time` (its last commit before
    then; all of the archive without one), then promotion to a new timeline that takes writes."""
    settings = {
        "restore_command": f"{shlex.quote(sys.executable)} -m pulsestack.store.archive wal-restore %f %p",
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
    }
    if target_time is not None:
        if target_time.tzinfo is None:
            raise ConfigError(f"the recovery target {target_time.isoformat()} needs a time zone (Z or +HH:MM)")
        settings["recovery_target_time"] = target_time.isoformat()
        settings["recovery_target_inclusive"] = "on"
    return settings


def conf_lines(settings: Mapping[str, str]) -> str:
    return "".join(f"{name} = '{value.replace(chr(39), chr(39) * 2)}'\n" for name, value in settings.items())


@dataclass(frozen=True, slots=True)
class Backup:
    """A complete base backup: its catalogue entry (base/<name>/backup.json)."""

    name: str
    systemid: str  # the database system it is a copy of (initdb draws it; a restore keeps it)
    # The segment the server was writing when the backup began: restoring it needs no older WAL.
    begin_wal: str
    begin_time: float  # Unix seconds
    end_time: float
    size: int  # bytes in the bucket, compressed and encrypted

    @property
    def ended(self) -> str:
        return datetime.fromtimestamp(self.end_time, UTC).isoformat(timespec="seconds")


def psql(query: str) -> str:
    """One value from the server libpq's environment names."""
    result = subprocess.run(["psql", "-XAtqc", query], capture_output=True, text=True)
    if result.returncode:
        raise ArchiveError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def server_systemid() -> str:
    """The system identifier of the server libpq's environment names (initdb draws it; a restore keeps it)."""
    return psql("SELECT system_identifier FROM pg_control_system()")


def basebackup_tar(immediate: bool) -> Iterator[bytes]:
    """pg_basebackup's tar of the server libpq's environment names, as it comes. Without WAL (-X none): the
    archive has it, and the server confirms the backup's last segment archived before pg_basebackup ends."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(["pg_basebackup", "--pgdata=-", "--format=tar", "--wal-method=none",
                                    f"--checkpoint={'fast' if immediate else 'spread'}", "--no-password",
                                    "--label=pulsestack"], stdout=subprocess.PIPE, stderr=errors)
        output = process.stdout
        assert output is not None
        finished = False
        try:
            yield from iter(lambda: output.read(READ_BYTES), b"")
            finished = True
        finally:
            if not finished:
                process.kill()  # the upload stopped midway: nobody reads the rest
            code = process.wait()
        if code:
            errors.seek(0)
            raise ArchiveError(f"pg_basebackup failed ({code}): {errors.read().decode(errors='replace').strip()}")


def base_backup(config: ArchiveConfig, immediate: bool = False) -> Backup:
    """A base backup into the archive, encrypted as it streams, then the retention; returns the new backup."""
    bucket = ArchiveBucket(config)
    name = time.strftime("pulsestack-%Y%m%dT%H%M%SZ", time.gmtime())
    begin_time = time.time()
    systemid = server_systemid()
    # Read before the backup's checkpoint: no later than the segment its label names, so the retention keeps
    # at least the WAL the backup needs.
    begin_wal = psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    size = bucket.upload(f"base/{name}/data", encrypt_stream(config.key, name, basebackup_tar(immediate)))
    backup = Backup(name, systemid, begin_wal, begin_time, time.time(), size)
    bucket.put(f"base/{name}/backup.json", json.dumps(dataclasses.asdict(backup)).encode())
    apply_retention(bucket, config.recovery_window_days, time.time())
    return backup


def catalogue(bucket: ArchiveBucket) -> list[Backup]:
    """The archive's complete base backups, oldest first."""
    found = []
    for key in bucket.keys("base/"):
        if key.endswith("/backup.json"):
            entry = bucket.get(key)
            if entry is not None:
                found.append(Backup(**json.loads(entry)))
    return sorted(found, key=lambda b: (b.end_time, b.name))


def backups(config: ArchiveConfig) -> list[Backup]:
    return catalogue(ArchiveBucket(config))


def expired(found: Sequence[Backup], window_days: int, now: float) -> tuple[list[Backup], list[Backup]]:
    """(kept, expired) of `found`, oldest first: kept are those that ended in the recovery window and the newest
    one before it, which restores the window's first point; the newest backup is always kept."""
    start = now - window_days * 86_400
    before = [b for b in found if b.end_time < start]
    kept = [b for b in found if b.end_time >= start]
    if before:
        kept.insert(0, before.pop())
    return kept, before


def wal_floors(found: Sequence[Backup], kept: Sequence[Backup]) -> dict[str, str | None]:
    """For each database system with backups: the oldest segment number (log and segment, 16 hex) a kept
    backup of it needs, whatever the timeline (older WAL restores nothing kept), or None when none of its
    backups is kept (none of its WAL does). The WAL of a system with no backup yet is not for the retention."""
    return {system: min((b.begin_wal[8:24] for b in kept if b.systemid == system), default=None)
            for system in {b.systemid for b in found}}


def expired_wal(key: str, floors: Mapping[str, str | None]) -> bool:
    """Whether the retention deletes WAL object `key` (wals/<system>/...)."""
    system, name = key.split("/")[1], key.rsplit("/", 1)[1]
    if system not in floors:
        return False
    floor = floors[system]
    return floor is None or (is_segment(name) and name[8:24] < floor)


def apply_retention(bucket: ArchiveBucket, window_days: int, now: float) -> None:
    """Deletes expired base backups, the data of unfinished ones older than the newest backup (a scheduler
    stopped midway), and the WAL no kept backup needs (`wal_floors`)."""
    found = catalogue(bucket)
    kept, old = expired(found, window_days, now)
    names = {b.name for b in kept}
    newest = kept[-1].name if kept else ""
    doomed = [key for key in bucket.keys("base/")
              if (key.split("/")[1] not in names and key.split("/")[1] < newest)]
    floors = wal_floors(found, kept)
    doomed += [key for key in bucket.keys("wals/") if expired_wal(key, floors)]
    bucket.delete(doomed)
    if old or doomed:
        print(f"retention: {len(old)} base backup(s) expired, {len(doomed)} object(s) deleted", flush=True)


def last_backup_end(config: ArchiveConfig, systemid: str) -> float | None:
    """When the newest complete base backup of the database system `systemid` ended (Unix seconds), or None if
    there is none. A backup of another system under the same archive (the server before a move by dump and
    restore, which initialises a new one) restores nothing of this one's."""
    return max((b.end_time for b in backups(config) if b.systemid == systemid), default=None)


def choose_backup(found: Sequence[Backup], target_time: datetime | None, backup_id: str) -> Backup:
    """The backup a restore starts from: `auto` the newest that ended before the target (the newest of all
    without one), `latest`, `oldest`, or one by name."""
    if not found:
        raise ArchiveError("the archive holds no complete base backup")
    if backup_id == "latest" or (backup_id == "auto" and target_time is None):
        return found[-1]
    if backup_id == "oldest":
        return found[0]
    if backup_id != "auto":
        for backup in found:
            if backup.name == backup_id:
                return backup
        raise ArchiveError(f"no base backup {backup_id} in the archive; it holds {', '.join(b.name for b in found)}")
    assert target_time is not None
    before = [b for b in found if b.end_time <= target_time.timestamp()]
    if not before:
        raise ArchiveError(f"no base backup ended before {target_time.isoformat()}: the oldest ended at"
                           f" {found[0].ended}")
    return before[-1]


def unpack(chunks: Iterable[bytes], destination: Path) -> None:
    """A tar stream unpacked into `destination` by tar(1), owned by whoever runs this."""
    with tempfile.TemporaryFile() as errors:
        tar = subprocess.Popen(["tar", "--extract", "--file=-", "--no-same-owner", f"--directory={destination}"],
                               stdin=subprocess.PIPE, stderr=errors)
        assert tar.stdin is not None
        try:
            for chunk in chunks:
                tar.stdin.write(chunk)
            tar.stdin.close()
        except BrokenPipeError:
            pass  # tar stopped early: its own message says why
        except BaseException:
            tar.kill()
            tar.wait()
            raise
        if tar.wait():
            errors.seek(0)
            raise ArchiveError(f"tar could not unpack the base backup: {errors.read().decode(errors='replace')}")


def restore(config: ArchiveConfig, destination: Path, target_time: datetime | None,
            backup_id: str = "auto") -> Backup:
    """A new data folder at `destination` from the archive, set to recover to `target_time` when started;
    returns the base backup it started from."""
    if destination.exists() and any(destination.iterdir()):
        raise ArchiveError(f"{destination} is not empty: a restore writes a data folder of its own")
    settings = recovery_settings(target_time)
    bucket = ArchiveBucket(config)
    chosen = choose_backup(catalogue(bucket), target_time, backup_id)
    # PGDATA under a fresh volume (/var/lib/postgresql/18/docker) does not exist yet.
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    unpack(decrypt_stream(config.key, chosen.name, bucket.reader(f"base/{chosen.name}/data")), destination)
    with (destination / "postgresql.auto.conf").open("a") as auto:
        auto.write("# pulsestack.store.archive restore\n" + conf_lines(settings))
    (destination / "recovery.signal").touch()
    destination.chmod(0o700)
    return chosen


class BackupMetrics:
    """What `schedule` serves for Prometheus (monitoring/pulsestack-metrics.yml; alert BaseBackupOverdue)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_end = Gauge("pulsestack_postgres_base_backup_last_end_timestamp_seconds",
                              "When the newest complete base backup in the archive ended (0: none yet).",
                              registry=registry)
        self.interval = Gauge("pulsestack_postgres_base_backup_interval_seconds",
                              "The base backups' schedule: one whenever the newest is this old.", registry=registry)
        self.failures = Counter("pulsestack_postgres_base_backup_failures",
                                "Scheduled base backups, retention runs or archive listings that failed.",
                                registry=registry)


def scheduled_round(config: ArchiveConfig, metrics: BackupMetrics) -> None:
    """A base backup if the newest is older than the interval (or there is none); the metrics from the archive's
    own catalogue, so a restarted scheduler reports the truth at once."""
    metrics.interval.set(config.backup_interval)
    try:
        systemid = server_systemid()
        last = last_backup_end(config, systemid)
        if last is None or time.time() - last >= config.backup_interval:
            # Until a first backup exists the archived WAL restores nothing: that one does not wait for a
            # spread checkpoint (up to checkpoint_timeout), the scheduled ones do, to spare the disks.
            backup = base_backup(config, immediate=last is None)
            took = backup.end_time - backup.begin_time
            print(f"base backup {backup.name} stored: {backup.size} bytes in {took:.0f} s", flush=True)
            last = last_backup_end(config, systemid)
    except ArchiveError as exc:
        metrics.failures.inc()
        print(f"pulsestack archive schedule: {exc}", file=sys.stderr, flush=True)
        return
    if last is not None:
        metrics.last_end.set(last)


def server_archives() -> bool:
    """Whether the server libpq's environment names is up with archive_mode on: not the image's first-start
    server (its init scripts'), whose data folder is still being made, and not a server that is down."""
    try:
        return psql("SHOW archive_mode") == "on"
    except ArchiveError:
        return False


def schedule(config: ArchiveConfig | None, port: int, poll: float = 60.0) -> None:
    """Forever: the metrics served on `port`; once the server archives, a scheduled round every `poll` seconds.
    Without an archive configured, only the metrics (no backup series): alert WalArchivingOff tells the
    operator, and the stack's scheduler stays healthy rather than restarting every minute."""
    registry = CollectorRegistry()
    if config is None:
        # No backup series at all: a last backup at 0 would also raise BaseBackupOverdue for the same cause.
        start_http_server(port, registry=registry)
        print("pulsestack archive schedule: PULSESTACK_ARCHIVE_URL is not set; no base backups (docs/durability.md)",
              file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    metrics = BackupMetrics(registry)
    start_http_server(port, registry=registry)
    while not server_archives():
        time.sleep(5)
    while True:
        scheduled_round(config, metrics)
        time.sleep(poll)


def parse_time(text: str) -> datetime:
    """--target-time: an ISO time with its zone (argparse names the option in front of the message)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO time (2026-12-05T10:20:00Z)") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone (Z or +HH:MM)")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pulsestack.store.archive", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    wal_archive = commands.add_parser("wal-archive", help="archive_command: encrypt and upload one WAL file")
    wal_archive.add_argument("path", type=Path)
    wal_restore = commands.add_parser("wal-restore", help="restore_command: download and decrypt one WAL file")
    wal_restore.add_argument("name")
    wal_restore.add_argument("path", type=Path)
    backup = commands.add_parser("backup", help="one base backup, then the retention")
    backup.add_argument("--immediate-checkpoint", action="store_true")
    commands.add_parser("list", help="the archive's complete base backups, oldest first")
    commands.add_parser("schedule", help="base backups every PULSESTACK_ARCHIVE_BACKUP_INTERVAL seconds, and"
                        " their metrics on PULSESTACK_ARCHIVE_METRICS_PORT")
    settings = commands.add_parser("settings", help="print the archiving settings for postgresql.conf")
    settings.add_argument("--options", action="store_true",
                          help="as NAME=VALUE arguments of postgres -c instead, each ended by a NUL")
    restore_cmd = commands.add_parser("restore", help="a data folder recovering to a point in time")
    restore_cmd.add_argument("destination", type=Path)
    restore_cmd.add_argument("--target-time", type=parse_time, help="ISO time with zone; omitted: all WAL")
    restore_cmd.add_argument("--backup-id", default="auto",
                             help="a backup's name, latest, oldest; auto: the newest that ended before the target")
    args = parser.parse_args(argv)

    if args.command == "settings":
        if args.options:
            sys.stdout.write("".join(f"{name}={value}\0" for name, value in archive_settings().items()))
        else:
            sys.stdout.write(conf_lines(archive_settings()))
        return 0
    if args.command == "schedule" and not os.environ.get("PULSESTACK_ARCHIVE_URL"):
        schedule(None, env_int("PULSESTACK_ARCHIVE_METRICS_PORT", DEFAULT_METRICS_PORT))
    try:
        config = ArchiveConfig.from_env()
        if args.command == "wal-archive":
            # PostgreSQL runs both in the data folder.
            archive_wal(config, args.path, data_folder_system(Path.cwd()))
        elif args.command == "wal-restore":
            return restore_wal(config, args.name, args.path, data_folder_system(Path.cwd()))
        elif args.command == "backup":
            print(base_backup(config, args.immediate_checkpoint).name)
        elif args.command == "list":
            for found in backups(config):
                print(f"{found.name}  system {found.systemid}  ended {found.ended}  {found.size} bytes"
                      f"  from WAL {found.begin_wal}")
        elif args.command == "schedule":
            schedule(config, env_int("PULSESTACK_ARCHIVE_METRICS_PORT", DEFAULT_METRICS_PORT))
        else:
            chosen = restore(config, args.destination, args.target_time, args.backup_id)
            print(f"restored base backup {chosen.name} (ended {chosen.ended}) into {args.destination}", flush=True)
    except (ConfigError, ArchiveError, OSError) as exc:
        print(f"pulsestack archive {args.command}: {exc}", file=sys.stderr)
        return ABORT_RECOVERY if args.command == "wal-restore" else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
