"""`pulsestack jetstream`: the questions the Ansible runbooks ask the NATS cluster (roles/nats_jetstream).

The test stack's server is a single node: its streams have one replica, and peer removal can only be
refused there. A three-server cluster on loopback shows a replaced server forgotten and its successor
taking its replicas; the cluster proof (deploy/cluster-proof.sh) does it with the playbooks. `unhealthy`
and `replaced_peers` are checked here on the answers a cluster gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest

from pulsestack.bus.topology import RAW, RAW_REPLAY
from pulsestack_cli.jetstream import replaced_peers, unhealthy
from pulsestack_cli.localstack import free_port, nats_server_binary, wait_for_port
from tests.helpers import run_cli

# Only the tests that talk to the server share its session loop; the others read answers.
on_server = pytest.mark.asyncio(loop_scope="session")


@on_server
async def test_streams_healthy_prints_each_streams_info_as_json(stack) -> None:
    code, out = await run_cli(stack, "jetstream", "streams-healthy", "--replicas", "1", RAW, RAW_REPLAY)
    assert code == 0
    answer = json.loads(out)
    infos = answer["streams"]
    assert [i["config"]["name"] for i in infos] == [RAW, RAW_REPLAY]
    assert answer["forgotten"] == []
    assert all(i["type"] == "io.nats.jetstream.api.v1.stream_info_response" for i in infos)


@on_server
async def test_streams_healthy_fails_when_the_replicas_are_missing(stack) -> None:
    # A single server has no cluster: no leader, no replica, so three replicas are never reached.
    code, out = await run_cli(stack, "jetstream", "streams-healthy", "--replicas", "3", "--within", "1", RAW)
    assert code == 1
    assert json.loads(out)["streams"][0]["config"]["name"] == RAW


@on_server
async def test_streams_healthy_of_a_missing_stream_fails_with_the_api_error(stack) -> None:
    code, out = await run_cli(stack, "jetstream", "streams-healthy", "--replicas", "1", "NO_SUCH_STREAM")
    assert code == 1
    assert json.loads(out)["streams"][0]["error"]["code"] == 404


@on_server
async def test_peer_remove_outside_a_cluster_is_refused(stack) -> None:
    code, out = await run_cli(stack, "jetstream", "peer-remove", "nats-9")
    assert code == 1
    assert "error" in json.loads(out)


@on_server
async def test_peer_remove_retries_until_its_time_is_up(stack) -> None:
    started = time.monotonic()
    code, out = await run_cli(stack, "jetstream", "peer-remove", "--within", "2", "nats-9")
    assert code == 1
    assert "error" in json.loads(out)
    assert time.monotonic() - started >= 2


@on_server
async def test_streams_healthy_without_offline_replicas_forgets_nothing(stack) -> None:
    code, out = await run_cli(stack, "jetstream", "streams-healthy", "--replicas", "1", "--running", "nats-1-a",
                              RAW, RAW_REPLAY)
    assert code == 0
    assert json.loads(out)["forgotten"] == []


def _info(leader: str, *replicas: dict[str, Any]) -> dict[str, Any]:
    return {"config": {"name": RAW}, "cluster": {"name": "pulsestack", "leader": leader, "replicas": list(replicas)}}


def test_unhealthy_reads_a_clusters_answer() -> None:
    current = {"name": "nats-2-b", "current": True, "active": 1000}
    assert unhealthy(_info("nats-1-a", current, {"name": "nats-3-c", "current": True}), 3) is None
    assert unhealthy(_info("", current, {"name": "nats-3-c", "current": True}), 3) == "no leader"
    # After a peer removal, before the replacement is placed: two of three.
    assert unhealthy(_info("nats-1-a", current), 3) == "2 of 3 replicas"
    assert unhealthy(_info("nats-1-a", current, {"name": "nats-3-c", "current": False}), 3) == "not current: nats-3-c"
    assert unhealthy(_info("nats-1-a", current, {"name": "nats-3-c", "current": True, "offline": True}), 3) \
        == "not current: nats-3-c"
    assert unhealthy({"error": {"code": 404, "description": "stream not found"}}, 3) == "stream not found"
    assert unhealthy({"config": {"name": RAW}}, 1) is None


def test_replaced_peers_are_offline_names_of_services_running_elsewhere() -> None:
    infos = [
        _info("nats-1-a", {"name": "nats-2-b", "current": True},
              {"name": "nats-3-c", "current": False, "offline": True}),
        _info("nats-1-a", {"name": "nats-2-old", "current": False, "offline": True},
              {"name": "nats-3-c", "current": False, "offline": True}),
    ]
    # nats-3 runs on node d now: its name on c is gone for good. nats-2 still runs on b: its old name
    # from an earlier node is gone too. An offline name of a service not running anywhere is left alone.
    assert replaced_peers(infos, ["nats-1-a", "nats-2-b", "nats-3-d"]) == ["nats-2-old", "nats-3-c"]
    assert replaced_peers(infos, ["nats-1-a", "nats-2-b"]) == ["nats-2-old"]
    # Down on its own node (same name running or not listed at all): kept, its data comes back with it.
    assert replaced_peers(infos, ["nats-1-a", "nats-2-old", "nats-3-c"]) == []
    assert replaced_peers([{"error": {"code": 503}}], ["nats-1-a"]) == []


MOVED = ["nats-1-a", "nats-2-b", "nats-3-d"]  # nats-3 runs on node d now


@pytest.mark.parametrize(("leader", "old_replica", "running", "forgotten"), [
    # Killed: marked offline minutes later, but silent (`active`, in ns) beyond a lame duck.
    ("nats-1-a", {"current": False, "active": 31_000_000_000}, MOVED, ["nats-3-c"]),
    # Lagging, not yet silent for that long: kept.
    ("nats-1-a", {"current": False, "active": 29_000_000_000}, MOVED, []),
    # Silent on its own node: kept, as an offline one is.
    ("nats-1-a", {"current": False, "active": 31_000_000_000}, ["nats-1-a", "nats-2-b", "nats-3-c"], []),
    # The killed server led the stream: the new leader never heard from it (active 0, not current).
    ("nats-2-b", {"current": False, "active": 0}, MOVED, ["nats-3-c"]),
    ("nats-2-b", {"current": True, "active": 0}, MOVED, []),
], ids=["silent", "lagging", "silent-on-its-node", "never-heard", "current"])
def test_a_silent_replica_counts_as_gone(leader: str, old_replica: dict[str, Any], running: list[str],
                                         forgotten: list[str]) -> None:
    other = "nats-1-a" if leader == "nats-2-b" else "nats-2-b"
    info = _info(leader, {"name": other, "current": True, "active": 3_000_000}, {"name": "nats-3-c", **old_replica})
    assert replaced_peers([info], running) == forgotten


class _ClusterServer:
    """One server of a three-server JetStream cluster on loopback, named as stack.yml names them."""

    def __init__(self, root: Path, name: str, cluster_ports: list[int]) -> None:
        self.name, self.port, self.cluster_port = name, free_port(), free_port()
        self.root, self.cluster_ports = root, cluster_ports
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        workdir = self.root / self.name
        workdir.mkdir(parents=True)
        routes = ", ".join(f"nats://127.0.0.1:{p}" for p in self.cluster_ports if p != self.cluster_port)
        (workdir / "nats.conf").write_text(
            f"server_name: {self.name}\nlisten: 127.0.0.1:{self.port}\n"
            f"jetstream {{ store_dir: \"{workdir / 'js'}\" }}\n"
            f"cluster {{ name: test, listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}\n"
            "accounts { SYS { users: [{user: sys, password: sys-secret}] },"
            " APP { jetstream: enabled, users: [{user: app, password: app-secret}] } }\n"
            "system_account: SYS\n"
        )
        log = open(workdir / "nats.log", "ab")
        self.process = subprocess.Popen([nats_server_binary(), "-c", str(workdir / "nats.conf")],
                                        stdout=log, stderr=log)
        wait_for_port(self.port)

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(how)
            self.process.wait(15)


async def _until_the_leader_notices(nc: nats.NATS, stream: str) -> None:
    """A killed replica stays "current" for some seconds; the runbooks ask long after a kill, so does this.

    Killing the stream's leader leaves the question unanswered until the others have elected a new one.
    """
    deadline = time.monotonic() + 30
    while True:
        try:
            reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)
            if unhealthy(json.loads(reply.data), 3) is not None:
                return
        except nats.errors.TimeoutError:
            pass
        assert time.monotonic() < deadline, "the stream's leader never noticed that a replica stopped"
        await asyncio.sleep(0.5)


async def _make_leader(nc: nats.NATS, stream: str, name: str) -> None:
    """Moves the stream's leadership to the server `name` (a stepdown that prefers it)."""
    deadline = time.monotonic() + 30
    while True:
        info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)).data)
        if info.get("cluster", {}).get("leader") == name:
            return
        assert time.monotonic() < deadline, f"{name} never became the leader of {stream}: {info.get('cluster')}"
        with contextlib.suppress(nats.errors.TimeoutError):
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                             json.dumps({"placement": {"preferred": name}}).encode(), timeout=5)
        await asyncio.sleep(1)


@on_server
@pytest.mark.parametrize(("how", "leading"), [(signal.SIGTERM, False), (signal.SIGKILL, False), (signal.SIGKILL, True)],
                         ids=["stopped", "killed", "killed-while-leading"])
async def test_streams_healthy_forgets_a_replaced_server_and_waits_for_its_successor(
        tmp_path: Path, how: signal.Signals, leading: bool) -> None:
    # What replace_server.yml does to a cluster: nats-3 stops on node c and starts on node d, empty, under a
    # new name; the old name must be removed before the stream can have three current replicas again.
    # Killed (its VM lost), it is marked offline only minutes later: its silence must do, within a minute;
    # when it led the stream, the new leader never heard from it at all.
    ports = [free_port() for _ in range(4)]
    servers = [_ClusterServer(tmp_path, name, ports) for name in ("nats-1-a", "nats-2-b", "nats-3-c", "nats-3-d")]
    for server, port in zip(servers, ports, strict=True):
        server.cluster_port = port
    first, second, replaced, successor = servers
    for server in (first, second, replaced):
        server.start()
    try:
        nc = await nats.connect(f"nats://127.0.0.1:{first.port}", user="app", password="app-secret")
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 30
            while True:  # until the cluster has formed and its meta group has a leader
                try:
                    await js.add_stream(name="RAW_TEST", subjects=["test.>"], num_replicas=3)
                    break
                except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            for i in range(10):
                while True:  # a stream just created answers once its replicas have elected a leader
                    try:
                        await js.publish(f"test.{i}", b"reading")
                        break
                    except nats.js.errors.NoStreamResponseError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
            if leading:
                await _make_leader(nc, "RAW_TEST", replaced.name)
            elif how == signal.SIGKILL:
                await _make_leader(nc, "RAW_TEST", first.name)
            replaced.stop(how)
            await _until_the_leader_notices(nc, "RAW_TEST")
        finally:
            await nc.close()
        successor.start()

        env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{first.port}", "PULSESTACK_NATS_USER": "app",
               "PULSESTACK_NATS_PASSWORD": "app-secret", "PULSESTACK_NATS_SYSTEM_USER": "sys",
               "PULSESTACK_NATS_SYSTEM_PASSWORD": "sys-secret"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pulsestack_cli", "jetstream", "streams-healthy", "--replicas", "3",
            "--within", "60", "--running", "nats-1-a", "--running", "nats-2-b", "--running", "nats-3-d", "RAW_TEST",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        answer = json.loads(out)
        assert answer["forgotten"] == ["nats-3-c"]
        cluster = answer["streams"][0]["cluster"]
        assert sorted([cluster["leader"]] + [r["name"] for r in cluster["replicas"]]) == [
            "nats-1-a", "nats-2-b", "nats-3-d"]
        assert answer["streams"][0]["state"]["messages"] == 10
    finally:
        for server in servers:
            server.stop()


@on_server
async def test_streams_healthy_waits_for_servers_that_are_still_starting(tmp_path: Path) -> None:
    """A runbook's `--within` covers servers that do not answer yet (rescheduled on a new node), not only
    streams catching up; without it, the first refused connection ends the wait."""
    from pulsestack_cli.localstack import NatsServer

    server = NatsServer(tmp_path / "late")
    env = {**os.environ, "NATS_URL": server.url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pulsestack_cli", "jetstream", "streams-healthy", "--replicas", "1",
        "--within", "12", "NO_SUCH_STREAM", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(4)
    server.start()
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        server.stop()
    # It reached the server and asked: the stream does not exist (1), not "cannot reach NATS" (3).
    assert proc.returncode == 1, err.decode()
    assert json.loads(out)["streams"][0]["error"]["code"] == 404
