"""`pulsestack`: the operator's command line."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import uvloop

from pulsestack.bus.topology import REGISTRY_BUCKET, BusLimits, retire_pulses, setup, stream_configs
from pulsestack.config import ConfigError
from pulsestack.logs import configure
from pulsestack.services import API, INGEST_HTTP, NBIOT_UDP
from pulsestack.store.maintenance import MONTHS_AHEAD, Retention, maintain
from pulsestack.store.migrate import migrate, set_role_passwords
from pulsestack.wire.codecs import PROTOCOLS
from pulsestack_cli import devices as devices_cmd
from pulsestack_cli import jetstream as jetstream_cmd
from pulsestack_cli import quarantine as quarantine_cmd
from pulsestack_cli import replay as replay_cmd
from pulsestack_cli.connections import LOCAL_ENV, Unreachable, connect, connect_db, local_settings, use_local_stack
from pulsestack_cli.output import add_json_flag, emit

ROLES = ("pulsestack_raw", "pulsestack_registry", "pulsestack_reader", "pulsestack_alerting", "pulsestack_owner")


async def _migrate() -> dict[str, Any]:
    conn = await connect_db()
    try:
        applied = await migrate(conn)
        passwords = {}
        for role in ROLES:
            path = os.environ.get(f"PULSESTACK_{role.upper()}_PASSWORD_FILE")
            if path:
                passwords[role] = Path(path).read_text().strip()
        await set_role_passwords(conn, passwords)
    finally:
        await conn.close()
    return {"migrations_applied": applied, "role_passwords_set": sorted(passwords)}


def _migrated(done: dict[str, Any]) -> str:
    return (f"migrations applied: {', '.join(done['migrations_applied']) or 'none (up to date)'}; "
            f"role passwords set: {len(done['role_passwords_set'])}")


async def cmd_migrate(args: argparse.Namespace) -> int:
    done = await _migrate()
    emit(args, done, _migrated(done))
    return 0


async def cmd_setup(args: argparse.Namespace) -> int:
    limits = BusLimits.from_env()
    nc = await connect()
    try:
        # Before migrating: the retired pulse stage's database role must outlive what is left for it.
        await retire_pulses(nc.jetstream())
        done = await _migrate()
        await setup(nc.jetstream(), limits)
    finally:
        await nc.close()
    streams = [str(config.name) for config in stream_configs(limits)]
    emit(args, {**done, "streams": streams, "registry_bucket": REGISTRY_BUCKET},
         f"{_migrated(done)}\nstreams {', '.join(streams)}, their consumers and the registry bucket are in place")
    return 0


async def cmd_maintain(args: argparse.Namespace) -> int:
    retention = Retention.every_table(args.retention_months) if args.retention_months is not None else (
        Retention.from_env())
    conn = await connect_db()
    try:
        report = await maintain(conn, retention, months_ahead=args.months_ahead)
    finally:
        await conn.close()
    if not report.ran:
        emit(args, {"ran": False},
             "another maintenance run is in progress (the alerting service's, most likely); nothing done")
        return 0
    trimmed = ", ".join(f"{table} {n}" for table, n in report.deleted.items() if n) or "none"
    emit(args, {"ran": True, "months_ahead": args.months_ahead, "dropped": report.dropped,
                "deleted": report.deleted},
         f"partitions ensured {args.months_ahead} months ahead; dropped: {', '.join(report.dropped) or 'none'}; "
         f"rows past retention deleted: {trimmed}")
    return 0


async def cmd_reprocess(args: argparse.Namespace) -> int:
    import datetime as dt

    from pulsestack.store.db import prepare
    from pulsestack.store.reprocess import reprocess

    def day(text: str | None) -> dt.datetime | None:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC) if text else None

    conn = await connect_db()
    try:
        await prepare(conn)
        report = await reprocess(conn, protocol=args.protocol, devices=args.device, since=day(args.since),
                                 until=day(args.until))
    finally:
        await conn.close()
    emit(args, asdict(report),
         f"reprocessed {report.readings} reading(s) of {report.devices} device(s); "
         f"{report.redecoded} decoded differently now, {report.undecodable} undecodable (left as they were)")
    return 0


# Exit codes (README, "Operating it"): 0 done, 1 unexpected failure (a traceback with --debug), 2 a wrong
# argument or setting, 3 NATS or PostgreSQL unreachable, 4 the device or settings file named does not exist.
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 1, 2, 3, 4


def cmd_env(args: argparse.Namespace) -> int:
    settings = local_settings()
    if not settings:
        print(f"pulsestack: no local stack settings in {LOCAL_ENV}: `make run` writes them while it runs",
              file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        emit(args, settings, "")
    else:
        for name, value in settings.items():
            print(f"export {name}={shlex.quote(value)}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pulsestack", description=__doc__,
        epilog=f"Without NATS_URL and DATABASE_URL, the settings of a running `make run` ({LOCAL_ENV}) are used. "
               "Exit codes: 0 done, 1 unexpected failure, 2 wrong argument or setting, 3 NATS or PostgreSQL "
               "unreachable, 4 not found.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    add_json_flag(sub.add_parser("env", help="the local stack's settings (of a running `make run`) as export lines"))
    add_json_flag(sub.add_parser("migrate", help="apply database migrations (safe to run from several replicas)"))
    add_json_flag(sub.add_parser("setup", help="migrate, then create streams, consumers and the registry bucket"))
    maintain = sub.add_parser(
        "maintain", help="what the alerting service runs hourly: partitions ahead, retention of every table")
    maintain.add_argument("--months-ahead", type=int, default=MONTHS_AHEAD,
                          help=f"monthly partitions to keep ready ahead (default {MONTHS_AHEAD})")
    maintain.add_argument("--retention-months", type=int, default=None,
                          help="one retention for every table (0 keeps everything); default: "
                               "PULSESTACK_RETENTION_<TABLE>_MONTHS, see docs/durability.md")
    add_json_flag(maintain)

    devices_cmd.add_parser(sub)
    quarantine_cmd.add_parser(sub)
    jetstream_cmd.add_parser(sub)
    replay_cmd.add_parser(sub)

    again = sub.add_parser("reprocess", help="re-derive pulses, gaps, state and rollups from the stored readings")
    again.add_argument("--protocol", choices=PROTOCOLS, help="only this protocol's devices")
    again.add_argument("--device", action="append", help="repeatable; default: every device in the range")
    again.add_argument("--since", help="device time from (ISO date or time, UTC)")
    again.add_argument("--until", help="device time before (ISO date or time, UTC)")
    add_json_flag(again)

    run = sub.add_parser("run", help="run the stack locally, or the ingesters and the processor in one process")
    run.add_argument("mode", choices=["local", "all"])
    run.add_argument("--devices", type=int, default=1000, help="simulated meters (default 1000)")
    run.add_argument("--rate", type=float, default=50.0, help="readings per second offered by the fleet")
    run.add_argument("--nbiot-share", type=float, default=0.5, help="share of NB-IoT meters, 0 to 1 (default 0.5)")
    run.add_argument("--lorawan-share", type=float, default=0.2,
                     help="share of LoRaWAN meters, half on ChirpStack, half on The Things Stack (default 0.2); "
                          "Sigfox the rest")
    run.add_argument("--workdir", type=Path, default=Path("var/local"),
                     help="where the local servers keep data, logs and secrets (default var/local)")
    run.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    run.add_argument("--fresh", action="store_true",
                     help="remove the workdir's earlier data, secrets and logs first (default: continue from them)")
    run.add_argument("--udp-port", type=int, default=NBIOT_UDP.default,
                     help="NB-IoT ingester's port (default %(default)s; 0: any free)")
    run.add_argument("--http-port", type=int, default=INGEST_HTTP.ops.default,
                     help="Sigfox ingester's port (default %(default)s; 0: any free)")
    run.add_argument("--api-port", type=int, default=API.ops.default,
                     help="read API's port (default %(default)s; 0: any free)")

    simulate = sub.add_parser("simulate", help="drive a simulated fleet against running ingesters")
    simulate.add_argument("--devices", type=int, default=1000, help="simulated meters (default 1000)")
    simulate.add_argument("--rate", type=float, default=100.0, help="readings per second (default 100)")
    simulate.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    simulate.add_argument("--nbiot-share", type=float, default=0.5, help="share of NB-IoT meters (default 0.5)")
    simulate.add_argument("--udp", default=f"127.0.0.1:{NBIOT_UDP.default}", help="NB-IoT ingester, HOST:PORT")
    simulate.add_argument("--http", default=f"http://127.0.0.1:{INGEST_HTTP.ops.default}/v1/sigfox",
                          help="Sigfox callback URL")
    simulate.add_argument("--sigfox-token-file", type=Path, required=True,
                          help="file whose first line is a Sigfox callback token")
    simulate.add_argument("--lorawan-share", type=float, default=0.0,
                          help="share of LoRaWAN meters (default 0; Sigfox the rest)")
    simulate.add_argument("--lorawan", default=f"http://127.0.0.1:{INGEST_HTTP.ops.default}/v1/lorawan",
                          help="base URL of the LoRaWAN webhooks (+ /chirpstack?event=up, /tts)")
    simulate.add_argument("--lorawan-token-file", type=Path,
                          help="file whose first line is a LoRaWAN webhook token (needed with --lorawan-share)")
    return parser


COMMANDS = {
    "migrate": cmd_migrate, "setup": cmd_setup, "maintain": cmd_maintain, "devices": devices_cmd.run,
    "quarantine": quarantine_cmd.run, "jetstream": jetstream_cmd.run, "reprocess": cmd_reprocess,
    "replay": replay_cmd.run,
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pulsestack")
    except PackageNotFoundError:
        return "(not installed)"


def _explain(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and line for an everyday mistake; None for anything else."""
    if isinstance(exc, Unreachable):
        return EXIT_UNREACHABLE, str(exc)
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, f"{exc} (settings: README.md, \"Operating it\")"
    if isinstance(exc, LookupError):
        return EXIT_NOT_FOUND, str(exc).strip("'\"")
    if isinstance(exc, ValueError):
        return EXIT_USAGE, str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "simulate" and args.lorawan_share and args.lorawan_token_file is None:
        parser.error("--lorawan-share needs --lorawan-token-file")
    if args.command == "run":
        from pulsestack_cli import run as run_cmd

        return run_cmd.main(args)
    if args.command == "env":
        return cmd_env(args)
    use_local_stack()
    configure("cli", os.environ.get("PULSESTACK_LOG_LEVEL", "warning"))
    try:
        if args.command == "simulate":
            from pulsestack_cli import run as run_cmd

            return uvloop.run(run_cmd.simulate(args))
        return uvloop.run(COMMANDS[args.command](args))
    except Exception as exc:
        explained = _explain(exc)
        if explained is None or args.debug:
            raise
        code, line = explained
        print(f"pulsestack: {line}", file=sys.stderr)
        return code



