"""`pulsestack devices ...`: the device registry, one device at a time or a whole fleet from a CSV file."""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import asyncpg

from pulsestack import keys
from pulsestack.bus.topology import REGISTRY_BUCKET
from pulsestack.registry import devices as registry
from pulsestack.wire.codecs import CODECS, PROTOCOLS
from pulsestack_cli.connections import connect, connect_db
from pulsestack_cli.output import add_json_flag, emit, notice

COLUMNS = ["protocol", "device_id", "label", *registry.SETTINGS]
BATCH = 10_000

IMPORT_HELP = (
    f"Registers or updates devices from a CSV file with a header naming columns among {', '.join(COLUMNS)} "
    "(protocol and device_id required). Idempotent: a device already registered takes the line's label and "
    "settings, an empty cell leaves its value as it is, and nothing else of it changes (a disabled device "
    "stays disabled). Each batch is one transaction, after which the ingesters' registry matches the table: "
    "an interrupted import is completed by running it again. A bad line is reported as `line N: reason` on "
    "stderr and nothing is stored for it, the rest is; exit code 2 when any line was bad.")
KEYS_HELP = (
    "append the keys of the NB-IoT devices this import creates to FILE (CSV protocol,device_id,key_version,key; "
    "created with mode 0600). Without it no key is written anywhere: keys are derived from the master secret, "
    "which alone holds them (`devices rotate-key` issues a device a new one)")


def add_parser(sub: Any) -> None:
    devices = sub.add_parser("devices", help="the device registry")
    dsub = devices.add_subparsers(dest="action", required=True)
    add = dsub.add_parser("add", help="register devices; prints each NB-IoT device's key once")
    add.add_argument("protocol", choices=PROTOCOLS)
    add.add_argument("ids", nargs="+", help="; ".join(f"{c.title}: {c.id_form}" for c in CODECS.values()))
    add.add_argument("--label", help="free text kept with each device (an address, a meter number)")
    add_json_flag(add)
    lst = dsub.add_parser("list", help="registered devices, enabled or not")
    lst.add_argument("--protocol", choices=PROTOCOLS, help="only this protocol's")
    lst.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    lst.add_argument("--all", action="store_true", help="every device, however many")
    add_json_flag(lst)
    for name, what in (("disable", "stop accepting a device's readings (they are quarantined)"),
                       ("rotate-key", "give an NB-IoT device a new key; prints it once")):
        p = dsub.add_parser(name, help=what)
        p.add_argument("protocol", choices=PROTOCOLS)
        p.add_argument("id", help="the device's id")
        add_json_flag(p)
    dsub.add_parser("sync", help="rebuild the registry bucket from the table")
    settings = dsub.add_parser("set", help="per-device settings: " + "; ".join(
        f"{k}: {v}" for k, v in registry.SETTINGS.items()))
    settings.add_argument("protocol", choices=PROTOCOLS)
    settings.add_argument("id", help="the device's id")
    settings.add_argument("settings", nargs="+", metavar="NAME=VALUE", help="one or more settings to change")
    add_json_flag(settings)
    imp = dsub.add_parser("import", help="register or update devices from a CSV file (a fleet at once)",
                          description=IMPORT_HELP)
    imp.add_argument("file", type=Path, help="the CSV file (UTF-8)")
    imp.add_argument("--keys", type=Path, metavar="FILE", help=KEYS_HELP)
    imp.add_argument("--batch", type=int, default=BATCH, help=f"lines per transaction (default {BATCH:,})")
    add_json_flag(imp)
    exp = dsub.add_parser("export", help="the enabled devices in the format `devices import` reads",
                          description="Writes the enabled devices (a disabled one stays out: importing the file "
                                      "elsewhere must not bring it back) as `devices import` reads them.")
    exp.add_argument("file", help="where to write the CSV file; - for standard output")


async def run(args: argparse.Namespace) -> int:
    conn = await connect_db()
    nc = await connect()
    try:
        kv = await nc.jetstream().key_value(REGISTRY_BUCKET)
        if args.action == "add":
            added = await registry.add(conn, kv, keys.load_master_key(), args.protocol, args.ids, args.label)
            for device, key in added.items():
                # Printed once: the key is derived, never stored, and shown only to whoever provisions.
                keyed = CODECS[args.protocol].keyed
                emit(args, {"protocol": args.protocol, "device_id": device, "key": key.hex() if keyed else None},
                     f"{args.protocol} {device} key {key.hex()}" if keyed else f"{args.protocol} {device} registered")
        elif args.action == "list":
            await _list(conn, args)
        elif args.action == "disable":
            if not await registry.disable(conn, kv, args.protocol, args.id):
                raise LookupError(f"{args.protocol} device {args.id} is not registered")  # exit 4, as rotate-key
            emit(args, {"protocol": args.protocol, "device_id": args.id, "disabled": True},
                 f"{args.protocol} {args.id} disabled")
        elif args.action == "rotate-key":
            key = await registry.rotate_key(conn, kv, keys.load_master_key(), args.protocol, args.id)
            emit(args, {"protocol": args.protocol, "device_id": args.id, "key": key.hex()},
                 f"{args.protocol} {args.id} new key {key.hex()}")
        elif args.action == "set":
            changes = dict(item.split("=", 1) for item in args.settings)
            settings = await registry.update_settings(conn, args.protocol, args.id, changes)
            emit(args, {"protocol": args.protocol, "device_id": args.id, "settings": settings},
                 f"{args.protocol} {args.id} settings {settings}")
        elif args.action == "sync":
            count = await registry.sync_all(conn, kv)
            print(f"registry bucket rebuilt for {count} protocol(s)")
        elif args.action == "import":
            await _import(registry.Import(conn, kv), args)
        elif args.action == "export":
            await _export(conn, args.file)
    finally:
        await nc.close()
        await conn.close()
    return 0


async def _list(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    # One more than asked for tells whether the list was cut.
    listed = await registry.list_devices(conn, args.protocol, None if args.all else args.limit + 1)
    for d in listed[: None if args.all else args.limit]:
        state = "disabled" if d.disabled else "enabled"
        emit(args, d, f"{d.protocol:7} {d.device_id:20} key v{d.key_version}  {state:8} {d.label or ''}")
    if not args.all and len(listed) > args.limit:
        notice(f"pulsestack: the first {args.limit} shown; --limit N or --all for more")


def _header(row: list[str] | None) -> list[str]:
    """The file's columns; raises ValueError for an unknown, repeated or missing one (nothing stored yet)."""
    names = [name.strip() for name in row or []]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise ValueError(f"line 1: unknown column {unknown[0]!r}; known: {', '.join(COLUMNS)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"line 1: column {repeated[0]!r} appears twice")
    missing = [name for name in ("protocol", "device_id") if name not in names]
    if missing:
        raise ValueError(f"line 1: no {missing[0]!r} column (the header names the columns)")
    return names


def _batches(lines: Any, names: list[str], size: int) -> Iterator[tuple[list[registry.Entry], list[tuple[int, str]]]]:
    """The records of a csv.reader past the header, in batches of `size`: the valid ones as entries, the
    others as (line, reason). A record's line is where it starts (a quoted cell may span lines)."""
    entries: list[registry.Entry] = []
    bad: list[tuple[int, str]] = []
    start = lines.line_num + 1
    for row in lines:
        if len(row) != len(names):
            if row:  # a blank line is no record
                bad.append((start, f"{len(names)} fields expected, {len(row)} found"))
        else:
            cells = dict(zip(names, (cell.strip() for cell in row), strict=True))
            try:
                entries.append(registry.entry(start, cells["protocol"], cells["device_id"], cells.get("label", ""),
                                              {name: cells[name] for name in registry.SETTINGS if name in cells}))
            except ValueError as exc:
                bad.append((start, str(exc)))
        start = lines.line_num + 1
        if len(entries) + len(bad) >= size:
            yield entries, bad
            entries, bad = [], []
    if entries or bad:
        yield entries, bad


class KeyFile:
    """The keys of created NB-IoT devices, appended (a rerun after an interruption completes the same file)
    and flushed to disk before the batch that created them commits."""

    def __init__(self, path: Path, master: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # also when the file existed with a wider mode
        self.out: IO[str] = os.fdopen(fd, "w", newline="")
        self.writer = csv.writer(self.out, lineterminator="\n")
        if not os.fstat(fd).st_size:
            self.writer.writerow(["protocol", "device_id", "key_version", "key"])
        self.master = master
        self.written = 0

    def __enter__(self) -> KeyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.close()

    def keep(self, created: list[tuple[str, str, int]]) -> None:
        for protocol, device, version in created:
            if CODECS[protocol].keyed:
                self.writer.writerow([protocol, device, version, keys.derive(self.master, protocol, device,
                                                                             version).hex()])
                self.written += 1
        self.out.flush()
        os.fsync(self.out.fileno())


async def _import(importer: registry.Import, args: argparse.Namespace) -> None:
    path, key_path, size = args.file, args.keys, args.batch
    if size < 1:
        raise ValueError("--batch must be at least 1")
    if not path.is_file():
        raise LookupError(f"{path}: no such file")
    master = keys.load_master_key() if key_path else b""
    created = updated = unchanged = bad = 0
    with path.open(newline="", encoding="utf-8-sig") as f, contextlib.ExitStack() as stack:
        lines = csv.reader(f)
        try:
            names = _header(next(lines, None))
            key_file = stack.enter_context(KeyFile(key_path, master)) if key_path else None
            for entries, refused in _batches(lines, names, size):
                outcome = await importer.batch(entries, key_file.keep if key_file else None)
                for line, reason in sorted(refused + outcome.refused):
                    print(f"line {line}: {reason}", file=sys.stderr)
                created += len(outcome.created)
                updated += outcome.updated
                unchanged += outcome.unchanged
                bad += len(refused) + len(outcome.refused)
        except (UnicodeDecodeError, csv.Error) as exc:
            # The reader cannot go past an unreadable line; the batches committed before it stay stored.
            where = f"line {lines.line_num}: {exc}" if isinstance(exc, csv.Error) else (
                f"not UTF-8 text after line {lines.line_num}")
            raise ValueError(f"{where}; stopped there, {created + updated + unchanged:,} line(s) stored before "
                             "(once fixed, run the import again: it is idempotent)") from exc
    written = (f"{key_file.written:,} NB-IoT key(s) appended to {key_path}" if key_file else
               "none written (derived from the master secret; --keys FILE writes those of new NB-IoT devices)")
    emit(args, {"file": str(path), "created": created, "updated": updated, "unchanged": unchanged, "bad": bad,
                "keys_written": key_file.written if key_file else 0},
         f"{path}: {created:,} device(s) created, {updated:,} updated, {unchanged:,} unchanged, {bad:,} bad "
         f"line(s) not stored; keys: {written}")
    if bad:
        raise ValueError(f"{bad:,} bad line(s) not stored (listed above with their line numbers)")


def _cell(value: object) -> str:
    """A setting's text form as `devices import` reads it back (400, not 400.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _output(target: str) -> IO[str]:
    return sys.stdout if target == "-" else Path(target).open("w", newline="", encoding="utf-8")


async def _export(conn: asyncpg.Connection, target: str) -> None:
    out = _output(target)
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        count = 0
        async for d in registry.each_device(conn, enabled_only=True):
            writer.writerow([d.protocol, d.device_id, d.label or "",
                             *(_cell(d.settings[name]) if name in d.settings else "" for name in registry.SETTINGS)])
            count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"{count:,} enabled device(s) written to {target if target != '-' else 'standard output'}",
          file=sys.stderr)
