"""The few read-only Docker Engine API calls the exporter makes (GET only), and what it takes from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

STACK_LABEL = "com.docker.stack.namespace"


@dataclass(frozen=True, slots=True)
class ServiceReplicas:
    service: str  # full swarm service name, e.g. pulsestack_raw-processor
    desired: int
    running: int


@dataclass(frozen=True, slots=True)
class NodeState:
    node: str  # hostname, as __meta_dockerswarm_node_hostname
    role: str  # manager or worker
    ready: bool


def session_for(docker_host: str) -> tuple[aiohttp.ClientSession, str]:
    """An HTTP session speaking to the engine, and the base URL to use with it."""
    timeout = aiohttp.ClientTimeout(total=10)
    if docker_host.startswith("unix://"):
        connector = aiohttp.UnixConnector(path=docker_host.removeprefix("unix://"))
        return aiohttp.ClientSession(connector=connector, timeout=timeout), "http://docker"
    base = "http://" + docker_host.split("://", 1)[1].rstrip("/")
    return aiohttp.ClientSession(timeout=timeout), base


def replicas_of(services: list[dict[str, Any]], stack: str = "") -> list[ServiceReplicas]:
    """From GET /services?status=true (API >= 1.41): desired and running tasks per long-running service.

    ServiceStatus.DesiredTasks is the replica count, or for a global service the number of nodes
    eligible for it; RunningTasks counts tasks in state running. Jobs (replicated-job, global-job)
    are one-shot and left out: they have nothing to keep running.
    """
    out = []
    for service in services:
        spec = service.get("Spec") or {}
        if stack and (spec.get("Labels") or {}).get(STACK_LABEL) != stack:
            continue
        mode = spec.get("Mode") or {}
        if "ReplicatedJob" in mode or "GlobalJob" in mode:
            continue
        status = service.get("ServiceStatus") or {}
        if "DesiredTasks" in status:
            desired = int(status["DesiredTasks"])
        elif "Replicated" in mode:
            desired = int((mode["Replicated"] or {}).get("Replicas", 1))
        else:
            continue  # a global service on an engine without ServiceStatus: unknown
        out.append(ServiceReplicas(spec.get("Name", service.get("ID", "?")), desired,
                                   int(status.get("RunningTasks", 0))))
    return out


def nodes_of(nodes: list[dict[str, Any]]) -> list[NodeState]:
    """From GET /nodes: every node of the swarm, ready or not."""
    out = []
    for node in nodes:
        hostname = (node.get("Description") or {}).get("Hostname") or node.get("ID", "?")
        role = (node.get("Spec") or {}).get("Role", "worker")
        state = (node.get("Status") or {}).get("State", "unknown")
        out.append(NodeState(hostname, role, state == "ready"))
    return out


class DockerApi:
    def __init__(self, docker_host: str) -> None:
        self._session, self._base = session_for(docker_host)

    async def _get(self, path: str, **params: str) -> Any:
        async with self._session.get(self._base + path, params=params) as response:
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status} {(await response.text())[:200]}")
            return await response.json()

    async def services(self, stack: str = "") -> list[ServiceReplicas]:
        return replicas_of(await self._get("/services", status="true"), stack)

    async def nodes(self) -> list[NodeState]:
        return nodes_of(await self._get("/nodes"))

    async def close(self) -> None:
        await self._session.close()
