"""`pulsestack jetstream`: the questions the Ansible runbooks ask the NATS cluster (roles/nats_jetstream).

The test server is a single node, so peer removal can only be refused here; the cluster proof
(deploy/cluster-proof.sh) removes real peers while it replaces NATS servers.
"""

from __future__ import annotations

import json

import pytest

from pulsestack.bus.streams import RAW
from tests.helpers import run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_stream_info_prints_the_api_answer_as_json(stack) -> None:
    code, out = await run_cli(stack, "jetstream", "stream-info", RAW)
    assert code == 0
    info = json.loads(out)
    assert info["config"]["name"] == RAW
    assert info["type"] == "io.nats.jetstream.api.v1.stream_info_response"
    assert info["state"]["messages"] >= 0


async def test_stream_info_of_a_missing_stream_fails_with_the_api_error(stack) -> None:
    code, out = await run_cli(stack, "jetstream", "stream-info", "NO_SUCH_STREAM")
    assert code == 1
    assert json.loads(out)["error"]["code"] == 404


async def test_peer_remove_outside_a_cluster_is_refused(stack) -> None:
    code, out = await run_cli(stack, "jetstream", "peer-remove", "nats-9")
    assert code == 1
    assert "error" in json.loads(out)
