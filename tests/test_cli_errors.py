"""The operator's everyday mistakes get one line naming the problem and what to do, and a documented exit
code (README, "Operating it"); `--debug` shows the traceback. And the CLI finds a running local stack by the
settings file `make run` writes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from pulsestack_cli.local import LocalStack
from pulsestack_cli.localstack import free_port
from tests.helpers import unique_number


async def cli(*args: str, **env: str) -> tuple[int, str, str]:
    """`pulsestack ARGS` with only `env` naming servers and secrets (none inherited from this process)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "DATABASE_", "PULSESTACK_"))}
    base.setdefault("PULSESTACK_LOCAL_ENV", "/nonexistent/env")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pulsestack_cli", *args, env={**base, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(err: str, starts: str) -> None:
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith(f"pulsestack: {starts}"), err


def servers(stack: LocalStack) -> dict[str, str]:
    return {"NATS_URL": stack.nats_url, "DATABASE_URL": stack.database_url}


async def test_unreachable_servers_are_named_with_what_to_do() -> None:
    nats_port, pg_port = free_port(), free_port()
    nowhere = {"NATS_URL": f"nats://127.0.0.1:{nats_port}", "DATABASE_URL": f"postgresql://x@127.0.0.1:{pg_port}/x"}
    code, _, err = await cli("quarantine", "list", **nowhere)
    assert code == 3
    one_line(err, f"cannot reach NATS at 127.0.0.1:{nats_port}")
    assert "make run" in err
    code, _, err = await cli("maintain", **nowhere)
    assert code == 3
    one_line(err, f"cannot reach PostgreSQL at 127.0.0.1:{pg_port}")
    code, _, err = await cli("--debug", "maintain", **nowhere)
    assert code == 1 and "Traceback" in err and "Unreachable" in err


@pytest.mark.parametrize(("args", "code", "starts"), [
    (("devices", "add", "nbiot", "notanimei"), 2, "'notanimei' is not an NB-IoT device id"),
    (("devices", "add", "nbiot", "18446744073709551616"), 2, "'18446744073709551616' is not an NB-IoT device id"),
    (("devices", "add", "sigfox", "12345G"), 2, "'12345G' is not a Sigfox device id"),
    (("devices", "rotate-key", "nbiot", "4"), 4, "nbiot device 4 is not registered"),
    (("devices", "disable", "sigfox", "4"), 4, "sigfox device 4 is not registered"),
    (("devices", "set", "nbiot", "4", "colour=blue"), 2, "unknown setting 'colour'"),
])
async def test_wrong_arguments_get_one_line(stack: LocalStack, args: tuple[str, ...], code: int,
                                           starts: str) -> None:
    answer, _, err = await cli(*args, **servers(stack),
                               PULSESTACK_DEVICE_MASTER_KEY_FILE=str(stack.master_key_file))
    assert answer == code, err
    one_line(err, starts)


async def test_a_missing_master_key_is_named(stack: LocalStack) -> None:
    code, _, err = await cli("devices", "add", "nbiot", "356938035643809", **servers(stack))
    assert code == 2
    one_line(err, "PULSESTACK_DEVICE_MASTER_KEY is required")


async def test_an_unreadable_nats_ca_file_is_named(stack: LocalStack, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    for path in (tmp_path / "missing.pem", tmp_path / "ca.pem"):
        code, _, err = await cli("quarantine", "list", **servers(stack), NATS_CA_FILE=str(path))
        assert code == 2, err
        one_line(err, f"NATS_CA_FILE={path} is not a readable CA certificate")


async def test_the_cli_finds_a_running_local_stack_by_its_settings_file(stack: LocalStack) -> None:
    stack.write_env()
    code, out, err = await cli("env", PULSESTACK_LOCAL_ENV=str(stack.env_file))
    assert code == 0, err
    assert f"export NATS_URL={stack.nats_url}" in out.splitlines()
    # NATS, PostgreSQL and the master key file, all from the settings file.
    device = str(unique_number(356_938_700_000_000))
    code, out, err = await cli("devices", "add", "nbiot", device, PULSESTACK_LOCAL_ENV=str(stack.env_file))
    assert code == 0 and out.startswith(f"nbiot {device} key "), (out, err)
    code, _, err = await cli("env")
    assert code == 4
    one_line(err, "no local stack settings")


async def test_version() -> None:
    code, out, _ = await cli("--version")
    assert code == 0 and out.startswith("pulsestack ") and out.strip() != "pulsestack (not installed)"


def test_every_subcommand_and_option_has_help() -> None:
    import argparse

    from pulsestack_cli.main import _build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, child in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{path} {name}")
                    walk(child, f"{path} {name}")
            elif action.option_strings and not action.help and action.dest != "help":
                missing.append(f"{path} {'/'.join(action.option_strings)}")
            elif not action.option_strings and not action.help and not action.choices:
                missing.append(f"{path} {action.dest}")

    walk(_build_parser(), "pulsestack")
    assert not missing, missing


async def test_a_cut_list_says_so(stack: LocalStack) -> None:
    from tests.helpers import register

    await register(stack, "sigfox", [f"{unique_number(0x5A000000) % 0xFFFFFFFF:X}" for _ in range(3)])
    env = {**servers(stack), "PULSESTACK_DEVICE_MASTER_KEY_FILE": str(stack.master_key_file)}
    code, out, err = await cli("devices", "list", "--protocol", "sigfox", "--limit", "2", **env)
    assert code == 0 and out.count("\n") == 2
    one_line(err, "the first 2 shown; --limit N or --all for more")
    code, out, err = await cli("devices", "list", "--protocol", "sigfox", "--all", **env)
    assert code == 0 and out.count("\n") >= 3 and err == ""


async def test_reports_print_one_json_object_with_json(stack: LocalStack) -> None:
    import json

    device = f"{unique_number(0x5B000000) % 0xFFFFFFFF:X}"
    for args, keys in ((("maintain", "--json"), {"ran", "dropped", "deleted"}),
                       (("reprocess", "--json", "--protocol", "nbiot", "--device", "4"), {"readings", "devices"}),
                       (("devices", "add", "sigfox", device, "--json"), {"protocol", "device_id", "key"}),
                       (("devices", "set", "sigfox", device, "daily_limit=7", "--json"), {"settings"}),
                       (("devices", "disable", "sigfox", device, "--json"), {"disabled"}),
                       (("quarantine", "replay", "--json"), {"replayed", "skipped"})):
        code, out, err = await cli(*args, **servers(stack),
                                   PULSESTACK_DEVICE_MASTER_KEY_FILE=str(stack.master_key_file))
        assert code == 0 and err == "", err
        [line] = out.splitlines()
        assert keys <= json.loads(line).keys(), line
