"""Continuous WAL archiving, base backups and point-in-time restores to S3-compatible storage, through
barman-cloud (docs/durability.md, "WAL archiving and base backups").

barman-cloud moves the bytes and keeps the bucket's layout, its backup catalogue and its retention; this module
owns what it lacks: WAL segments are compressed and encrypted (AES-256-GCM, the key from
`PULSESTACK_ARCHIVE_KEY_FILE`) before barman-cloud-wal-archive uploads them, and decrypted after
barman-cloud-wal-restore downloads them. Every setting comes from the environment (`ArchiveConfig.from_env`), so
PostgreSQL's `archive_command` and `restore_command` are the same short lines everywhere:

    python -m pulsestack.store.archive wal-archive %p
    python -m pulsestack.store.archive wal-restore %f %p

Only the standard library, `cryptography`, `prometheus-client` and barman are imported, so the PostgreSQL image
needs no more than the `archive` extra.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from pulsestack.config import ConfigError, env_int, env_str, secret

# A file of ours, format 1: MAGIC, a random 96-bit nonce, then AES-256-GCM of the zlib-compressed segment with
# MAGIC and the segment's name as associated data, so a segment stored under another name does not decrypt.
MAGIC = b"PSWAL\x01"
NONCE_BYTES = 12
KEY_BYTES = 32
# zlib's fastest level: a segment closed by archive_timeout is mostly zeros, which any level removes, and the
# archiver must keep up with the write rate on one core.
COMPRESSION_LEVEL = 1

# Segments close at least this often while anything is written (an idle server closes none): the archive lags
# the database by at most this plus one upload. 5 min keeps WalArchiveStale's 15 min far off and the replay from
# RAW short, at most 288 segments a day (16 MiB each before compression, mostly zeros when nearly empty).
ARCHIVE_TIMEOUT_SECONDS = 300
DEFAULT_RETENTION = "RECOVERY WINDOW OF 7 DAYS"
DEFAULT_BACKUP_INTERVAL_SECONDS = 86_400
DEFAULT_METRICS_PORT = 9188

# restore_command's exit codes: PostgreSQL takes 1 as "not in the archive" (the end of recovery, or the next
# timeline); above 125 it aborts recovery. A segment that exists but cannot be fetched or decrypted must abort:
# read as "not in the archive" it would end recovery early, at a point nobody chose.
NOT_ARCHIVED = 1
ABORT_RECOVERY = 255
BARMAN_NOT_FOUND = 1  # barman-cloud-wal-restore's OperationErrorExit


class ArchiveError(RuntimeError):
    """A barman-cloud command failed, or a downloaded segment is not ours; the message says which."""


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
    retention: str
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
        return cls(
            destination=destination.rstrip("/"),
            server=env_str("PULSESTACK_ARCHIVE_SERVER", "pulsestack"),
            endpoint=os.environ.get("PULSESTACK_ARCHIVE_ENDPOINT") or None,
            access_key_id=secret("PULSESTACK_ARCHIVE_ACCESS_KEY_ID"),
            secret_access_key=secret("PULSESTACK_ARCHIVE_SECRET_ACCESS_KEY"),
            region=os.environ.get("PULSESTACK_ARCHIVE_REGION") or None,
            key=parse_key(key_text),
            retention=env_str("PULSESTACK_ARCHIVE_RETENTION", DEFAULT_RETENTION),
            backup_interval=interval,
            server_side_encryption=os.environ.get("PULSESTACK_ARCHIVE_SSE") or None,
        )

    def cloud_options(self) -> list[str]:
        options = ["--cloud-provider", "aws-s3"]
        if self.endpoint:
            options += ["--endpoint-url", self.endpoint]
        return options

    def upload_options(self) -> list[str]:
        return ["--encryption", self.server_side_encryption] if self.server_side_encryption else []

    def environment(self) -> dict[str, str]:
        """The barman-cloud commands' environment: boto3 takes the credentials from it."""
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key_id,
               "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
        if self.region:
            env["AWS_DEFAULT_REGION"] = self.region
        return env


def barman(config: ArchiveConfig, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One barman-cloud command, beside this interpreter (the same virtualenv) or on PATH."""
    beside = Path(sys.executable).parent / command
    program = str(beside) if beside.exists() else command
    return subprocess.run([program, *args], env=config.environment(), capture_output=True, text=True)


def checked(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode:
        name = Path(str(result.args[0])).name
        raise ArchiveError(f"{name} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def archive_wal(config: ArchiveConfig, path: Path) -> None:
    """archive_command: the segment (or history or backup-label file) at `path`, encrypted, into the archive."""
    with tempfile.TemporaryDirectory(prefix="pulsestack-wal-") as staging:
        # barman-cloud takes the object's name from the file's: the encrypted copy keeps the segment's name.
        staged = Path(staging) / path.name
        staged.write_bytes(encrypt_segment(config.key, path.name, path.read_bytes()))
        checked(barman(config, "barman-cloud-wal-archive", *config.cloud_options(), *config.upload_options(),
                       config.destination, config.server, str(staged)))


def restore_wal(config: ArchiveConfig, name: str, path: Path) -> int:
    """restore_command: `name` from the archive, decrypted, at `path`; the exit code PostgreSQL expects."""
    with tempfile.TemporaryDirectory(prefix="pulsestack-wal-") as staging:
        fetched = Path(staging) / name
        result = barman(config, "barman-cloud-wal-restore", *config.cloud_options(), config.destination,
                        config.server, name, str(fetched))
        if result.returncode == BARMAN_NOT_FOUND:
            return NOT_ARCHIVED
        checked(result)
        data = decrypt_segment(config.key, name, fetched.read_bytes())
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


def base_backup(config: ArchiveConfig, immediate: bool = False) -> str:
    """A base backup into the archive, then the retention policy (older backups, and WAL only they needed,
    deleted); returns the new backup's id."""
    name = time.strftime("pulsestack-%Y%m%dT%H%M%SZ", time.gmtime())
    # gzip: the one compression barman-cloud has without another package; a day's backup can take its time.
    checked(barman(config, "barman-cloud-backup", *config.cloud_options(), *config.upload_options(),
                   "--gzip", "--name", name, *(["--immediate-checkpoint"] if immediate else []),
                   config.destination, config.server))
    checked(barman(config, "barman-cloud-backup-delete", *config.cloud_options(),
                   "--retention-policy", config.retention, config.destination, config.server))
    for backup in backups(config):
        if backup.get("backup_name") == name:
            return str(backup["backup_id"])
    raise ArchiveError(f"barman-cloud-backup succeeded, yet no backup named {name} is listed")


def backups(config: ArchiveConfig) -> list[dict[str, object]]:
    """The archive's base backups, oldest first, as barman-cloud-backup-list describes them."""
    listed = json.loads(checked(barman(config, "barman-cloud-backup-list", *config.cloud_options(),
                                       "--format", "json", config.destination, config.server)))
    found: list[dict[str, object]] = listed.get("backups_list", [])
    return found


def last_backup_end(config: ArchiveConfig, systemid: str) -> float | None:
    """When the newest complete base backup of the database system `systemid` ended (Unix seconds), or None if
    there is none. A backup of another system under the same archive (the server before a move by dump and
    restore, which initialises a new one) restores nothing of this one's."""
    ends = [datetime.fromisoformat(str(b["end_time_iso"])).timestamp()
            for b in backups(config)
            if b.get("status") == "DONE" and b.get("end_time_iso") and str(b.get("systemid")) == systemid]
    return max(ends, default=None)


def server_systemid() -> str:
    """The system identifier of the server libpq's environment names (initdb draws it; a restore keeps it)."""
    return checked(subprocess.run(["psql", "-XAtqc", "SELECT system_identifier FROM pg_control_system()"],
                                  capture_output=True, text=True)).strip()


def restore(config: ArchiveConfig, destination: Path, target_time: datetime | None,
            backup_id: str = "auto") -> None:
    """A new data folder at `destination` from the archive, set to recover to `target_time` when started.
    `auto`: the newest backup that ended before the target (the newest of all without one)."""
    if destination.exists() and any(destination.iterdir()):
        raise ArchiveError(f"{destination} is not empty: a restore writes a data folder of its own")
    settings = recovery_settings(target_time)
    # PGDATA under a fresh volume (/var/lib/postgresql/18/docker) does not exist yet.
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = ["--target-time", settings["recovery_target_time"]] if target_time is not None else []
    checked(barman(config, "barman-cloud-restore", *config.cloud_options(), *target, config.destination,
                   config.server, backup_id, str(destination)))
    with (destination / "postgresql.auto.conf").open("a") as auto:
        auto.write("# pulsestack.store.archive restore\n" + conf_lines(settings))
    (destination / "recovery.signal").touch()
    destination.chmod(0o700)


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
            print(f"base backup {base_backup(config, immediate=last is None)} stored", flush=True)
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
    shown = subprocess.run(["psql", "-XAtqc", "SHOW archive_mode"], capture_output=True, text=True)
    return shown.returncode == 0 and shown.stdout.strip() == "on"


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
    backup = commands.add_parser("backup", help="one base backup, then the retention policy")
    backup.add_argument("--immediate-checkpoint", action="store_true")
    commands.add_parser("schedule", help="base backups every PULSESTACK_ARCHIVE_BACKUP_INTERVAL seconds, and"
                        " their metrics on PULSESTACK_ARCHIVE_METRICS_PORT")
    settings = commands.add_parser("settings", help="print the archiving settings for postgresql.conf")
    settings.add_argument("--options", action="store_true",
                          help="as NAME=VALUE arguments of postgres -c instead, each ended by a NUL")
    restore_cmd = commands.add_parser("restore", help="a data folder recovering to a point in time")
    restore_cmd.add_argument("destination", type=Path)
    restore_cmd.add_argument("--target-time", type=parse_time, help="ISO time with zone; omitted: all WAL")
    restore_cmd.add_argument("--backup-id", default="auto",
                             help="a backup's id or name, latest, oldest; auto: the newest before the target")
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
            archive_wal(config, args.path)
        elif args.command == "wal-restore":
            return restore_wal(config, args.name, args.path)
        elif args.command == "backup":
            print(base_backup(config, args.immediate_checkpoint))
        elif args.command == "schedule":
            schedule(config, env_int("PULSESTACK_ARCHIVE_METRICS_PORT", DEFAULT_METRICS_PORT))
        else:
            restore(config, args.destination, args.target_time, args.backup_id)
    except (ConfigError, ArchiveError, OSError) as exc:
        print(f"pulsestack archive {args.command}: {exc}", file=sys.stderr)
        return ABORT_RECOVERY if args.command == "wal-restore" else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
