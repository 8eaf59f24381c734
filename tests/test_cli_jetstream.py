"""`pulsestack jetstream`: the questions the Ansible runbooks ask the NATS cluster (roles/nats_jetstream).

The test server is a single node: its streams have one replica, and peer removal can only be refused
here. The cluster proof (deploy/cluster-proof.sh) waits on three-replica streams and removes real peers
while it replaces NATS servers; `unhealthy` is checked here on the answers a cluster gives.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pulsestack.bus.streams import PULSES, RAW
from pulsestack_cli.jetstream import replaced_peers, unhealthy
from tests.helpers import run_cli

# Only the tests that talk to the server share its session loop; the others read answers.
on_server = pytest.mark.asyncio(loop_scope="session")


@on_server
async def test_streams_healthy_prints_each_streams_info_as_json(stack) -> None:
    code, out = await run_cli(stack, "jetstream", "streams-healthy", "--replicas", "1", RAW, PULSES)
    assert code == 0
    infos = json.loads(out)
    assert [i["config"]["name"] for i in infos] == [RAW, PULSES]
    assert all(i["type"] == "io.nats.jetstream.api.v1.stream_info_response" for i in infos)


@on_server
async def test_streams_healthy_fails_when_the_replicas_are_missing(stack) -> None:
    # A single server has no cluster: no leader, no replica, so three replicas are never reached.
    code, out = await run_cli(stack, "jetstream", "streams-healthy", "--replicas", "3", "--within", "1", RAW)
    assert code == 1
    assert json.loads(out)[0]["config"]["name"] == RAW


@on_server
async def test_streams_healthy_of_a_missing_stream_fails_with_the_api_error(stack) -> None:
    code, out = await run_cli(stack, "jetstream", "streams-healthy", "--replicas", "1", "NO_SUCH_STREAM")
    assert code == 1
    assert json.loads(out)[0]["error"]["code"] == 404


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
async def test_forget_replaced_without_offline_replicas_forgets_nothing(stack) -> None:
    code, out = await run_cli(stack, "jetstream", "forget-replaced", "--running", "nats-1-a", RAW, PULSES)
    assert code == 0
    assert json.loads(out) == []


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
