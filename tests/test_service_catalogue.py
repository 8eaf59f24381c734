"""stack.yml and the Dockerfiles agree with the service catalogue (pulsestack/services.py): the same
services, each with the catalogue's ports, database role and NATS user. Static: reads files only."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pulsestack.services import BY_NAME, SERVICES, Service

REPO = Path(__file__).resolve().parent.parent
IMAGE = re.compile(r"pulsestack/([\w-]+):")


def image_of(entry: dict[str, Any]) -> str | None:
    """`ingest-udp` of `${PULSESTACK_REGISTRY:-}pulsestack/ingest-udp:...`; None for others' images."""
    found = IMAGE.search(entry.get("image", ""))
    return found.group(1) if found else None


def pulsestack_services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The long-running services of pulsestack's own service images: not the one-shot setup job, nor those of
    pulsestack/postgres (PostgreSQL and its archive scheduler: deploy/postgres/Dockerfile, not the catalogue's)."""
    return {name: s for name, s in stack["services"].items()
            if image_of(s) not in (None, "postgres") and s.get("deploy", {}).get("mode") != "replicated-job"}


def stack_problems(service: Service, entry: dict[str, Any]) -> list[str]:
    env = {k: str(v) for k, v in (entry.get("environment") or {}).items()}
    labels = entry.get("deploy", {}).get("labels") or {}
    ops = str(service.ops.default)
    found = {
        "image": image_of(entry),
        "prometheus.job": labels.get("prometheus.job"),
        "prometheus.port": labels.get("prometheus.port"),
        "healthcheck": entry.get("healthcheck", {}).get("test"),
        "database role": urlsplit(env["DATABASE_URL"]).username if "DATABASE_URL" in env else None,
        "NATS user": env.get("PULSESTACK_NATS_USER"),
        **{port.env: env.get(port.env) for port in service.ports},
    }
    wanted = {
        "image": service.module.replace("_", "-"),
        "prometheus.job": service.name,
        "prometheus.port": ops,
        "healthcheck": ["CMD", "healthz", ops],
        "database role": service.database_role,
        "NATS user": service.nats_user,
        **{port.env: str(port.default) for port in service.ports},
    }
    problems = [f"{service.name}: {key} is {found[key]!r} in stack.yml, {value!r} in the catalogue"
                for key, value in wanted.items() if found[key] != value]
    if service.traffic is not None:
        targets = {(p["target"], p["protocol"]) for p in entry.get("ports", [])}
        if (service.traffic.default, service.traffic.protocol) not in targets:
            problems.append(f"{service.name}: stack.yml publishes no {service.traffic.protocol} port "
                            f"{service.traffic.default}")
    return problems


# Not `stack`: tests/conftest.py gives that name to the running local stack.
@pytest.fixture(scope="module")
def stack_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "stack.yml").read_text())
    return data


def test_stack_yml_runs_exactly_the_catalogued_services(stack_file: dict[str, Any]) -> None:
    assert sorted(pulsestack_services(stack_file)) == sorted(BY_NAME)


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_stack_yml_gives_each_service_the_catalogues_ports_and_users(stack_file: dict[str, Any],
                                                                     service: Service) -> None:
    assert stack_problems(service, stack_file["services"][service.name]) == []


def test_a_port_changed_in_stack_yml_alone_is_found(stack_file: dict[str, Any]) -> None:
    service = BY_NAME["raw-processor"]
    changed = copy.deepcopy(stack_file["services"][service.name])
    changed["deploy"]["labels"]["prometheus.port"] = "9999"
    assert stack_problems(service, changed) == [
        "raw-processor: prometheus.port is '9999' in stack.yml, '9102' in the catalogue"]


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_each_dockerfile_starts_exposes_and_probes_what_the_catalogue_says(service: Service) -> None:
    dockerfile = (REPO / service.module.replace("_", "-") / "Dockerfile").read_text()
    assert f'ENTRYPOINT ["python", "-m", "{service.module}"]' in dockerfile
    exposed = set(re.findall(r"\d+/(?:tcp|udp)", " ".join(re.findall(r"^EXPOSE (.+)$", dockerfile, re.M))))
    assert exposed == {f"{port.default}/{port.protocol}" for port in service.ports}
    assert f'healthz "${{{service.ops.env}:-{service.ops.default}}}"' in dockerfile
    for port in service.ports:
        # An ENV default, where the image sets one, is the catalogue's.
        assert re.findall(rf"\b{port.env}=(\d+)", dockerfile) in ([], [str(port.default)]), port.env
