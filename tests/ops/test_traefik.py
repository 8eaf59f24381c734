"""Traefik's configuration checked against Traefik's published v3 JSON schemas.

Traefik does not run here. The schemas (SchemaStore's traefik-v3.json for the
static file, traefik-v3-file-provider.json for dynamic files) are provided in
../shared/schemas beside the repository; without them the tests skip, and
fail under PULSESTACK_REQUIRE_ALL=1. On top of the schemas, the tests pin the
conventions other parts of pulsestack rely on (entrypoints, resolver name,
network, middleware names).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unavailable import unavailable

REPO = Path(__file__).resolve().parents[2]
TRAEFIK = REPO / "traefik"
STATIC = TRAEFIK / "traefik.yml"
DYNAMIC_FILES = sorted((TRAEFIK / "dynamic").glob("*.yml"))
SCHEMAS = REPO.parent / "shared" / "schemas"
STACK = REPO / "stack.yml"


def load_schema(name: str) -> dict[str, Any]:
    path = SCHEMAS / name
    if not path.is_file():
        unavailable(f"schema {path} not found")
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def validator(schema: dict[str, Any]) -> Any:
    try:
        import jsonschema
    except ImportError:
        unavailable("Python package jsonschema not installed")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator(schema).iter_errors(document), key=lambda e: list(map(str, e.path)))
    ]


def load(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def dynamic_middlewares() -> dict[str, Any]:
    middlewares: dict[str, Any] = {}
    for path in DYNAMIC_FILES:
        for name, spec in (load(path).get("http", {}).get("middlewares") or {}).items():
            assert name not in middlewares, f"middleware {name} defined twice"
            middlewares[name] = spec
    return middlewares


# ------------------------------------------------------------ the schemas


def test_static_configuration_matches_the_v3_schema() -> None:
    errors = schema_errors(load_schema("traefik-v3.json"), load(STATIC))
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("path", DYNAMIC_FILES, ids=lambda p: p.name)
def test_dynamic_configuration_matches_the_v3_file_provider_schema(path: Path) -> None:
    errors = schema_errors(load_schema("traefik-v3-file-provider.json"), load(path))
    assert not errors, "\n".join(errors)


def test_the_schemas_reject_what_traefik_would_reject() -> None:
    # The check has teeth: v2's swarmMode, a misspelt key and a wrong type
    # all fail validation.
    static_schema = load_schema("traefik-v3.json")
    v2 = copy.deepcopy(load(STATIC))
    v2["providers"] = {"docker": {"swarmMode": True, "exposedByDefault": False}}
    assert schema_errors(static_schema, v2)
    typo = copy.deepcopy(load(STATIC))
    typo["entryPoints"]["websecure"]["adress"] = ":443"
    assert schema_errors(static_schema, typo)
    dynamic_schema = load_schema("traefik-v3-file-provider.json")
    wrong = copy.deepcopy(load(DYNAMIC_FILES[0]))
    wrong["http"]["middlewares"]["sigfox-body-limit"]["buffering"]["maxRequestBodyBytes"] = "4 KiB"
    assert schema_errors(dynamic_schema, wrong)


# ---------------------------------------------------- pulsestack conventions


def test_entrypoints_redirect_to_https_and_expose_metrics() -> None:
    static = load(STATIC)
    eps = static["entryPoints"]
    assert eps["web"]["address"] == ":80"
    assert eps["web"]["http"]["redirections"]["entryPoint"] == {"to": "websecure", "scheme": "https", "permanent": True}
    assert eps["websecure"]["address"] == ":443"
    assert eps["websecure"]["http"]["tls"]["certResolver"] == "le"
    assert eps["metrics"]["address"] == ":8082"
    assert static["metrics"]["prometheus"]["entryPoint"] == "metrics"
    assert static["log"]["format"] == "json" and static["accessLog"]["format"] == "json"
    assert static["api"].get("insecure") is not True


def test_acme_resolver_stores_on_the_manager_volume() -> None:
    acme = load(STATIC)["certificatesResolvers"]["le"]["acme"]
    assert acme["storage"] == "/letsencrypt/acme.json"
    assert {"tlsChallenge", "httpChallenge", "dnsChallenge"} & set(acme)


def test_swarm_provider_is_opt_in_on_the_edge_network() -> None:
    providers = load(STATIC)["providers"]
    assert "docker" not in providers, "v3 uses providers.swarm for swarm services"
    swarm = providers["swarm"]
    assert swarm["exposedByDefault"] is False
    assert swarm["network"] == "pulsestack_edge"
    assert re.fullmatch(r"unix:///var/run/docker\.sock|tcp://socket-proxy:2375", swarm["endpoint"])
    assert providers["file"]["directory"]


def test_middlewares_named_in_the_stack_conventions() -> None:
    mw = dynamic_middlewares()
    assert mw["admin-auth"]["basicAuth"]["usersFile"] == "/run/secrets/admin_users"
    assert "users" not in mw["admin-auth"]["basicAuth"], "users come from the secret file only"
    assert mw["sigfox-body-limit"]["buffering"]["maxRequestBodyBytes"] == 4096
    assert mw["sigfox-ratelimit"]["rateLimit"]["average"] > 0
    assert mw["secure-headers"]["headers"]["stsSeconds"] > 0
    for name, spec in mw.items():
        for ref in spec.get("chain", {}).get("middlewares", []):
            assert ref in mw, f"chain {name} refers to unknown middleware {ref}"


def _labels(service: dict[str, Any]) -> dict[str, str]:
    labels = (service.get("deploy") or {}).get("labels") or {}
    if isinstance(labels, list):
        labels = dict(item.split("=", 1) for item in labels)
    return {str(k): str(v) for k, v in labels.items()}


def test_stack_routers_use_defined_middlewares_and_name_their_port() -> None:
    # Nothing to check until stack.yml exists (a skip would fail CI).
    if not STACK.is_file():
        return
    services = (load(STACK) or {}).get("services") or {}
    middlewares = dynamic_middlewares()
    routed = 0
    for name, service in services.items():
        labels = _labels(service)
        if labels.get("traefik.enable") != "true":
            continue
        routed += 1
        assert any(re.fullmatch(r"traefik\.http\.services\.[^.]+\.loadbalancer\.server\.port", k) for k in labels), \
            f"{name}: swarm needs traefik.http.services.<name>.loadbalancer.server.port"
        for key, value in labels.items():
            if key.endswith(".middlewares"):
                for ref in value.split(","):
                    ref = ref.strip()
                    if ref.endswith("@file"):
                        assert ref[: -len("@file")] in middlewares, f"{name}: {key} refers to unknown {ref}"
    assert routed, "stack.yml routes nothing through Traefik"
