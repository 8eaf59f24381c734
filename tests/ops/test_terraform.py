"""Static checks of the Scaleway Terraform configuration in terraform/.

Providers cannot be downloaded here, so `init`/`plan` are not run. What is
checked instead: `terraform fmt`, that every file parses (python-hcl2), the
variables' descriptions, types and validations, the security group rules,
and -- with `terraform console` in a temporary folder holding a tiny,
provider-free configuration -- the node layout of main.tf and the Ansible
inventory that outputs.tf renders from templates/inventory.yml.tftpl.

A missing tool (terraform) skips its tests, or fails them when
PULSESTACK_REQUIRE_ALL=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unavailable import unavailable

try:
    import hcl2
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("PULSESTACK_REQUIRE_ALL") == "1":
        raise
    pytest.skip("python-hcl2 is not installed", allow_module_level=True)

from deploy.proof import terraform_offline as offline

ROOT = Path(__file__).resolve().parents[2]

TF_DIR = ROOT / "terraform"
TEMPLATE = TF_DIR / "templates" / "inventory.yml.tftpl"
EXAMPLE_INVENTORY = ROOT / "ansible" / "inventories" / "example" / "hosts.yml"

# Values the example inventory (ansible/inventories/example/hosts.yml) was
# rendered with; test_example_inventory_is_what_terraform_outputs renders it
# again and compares.
EXAMPLE_VARS = {
    "admin_cidrs": '["203.0.113.0/24"]',
    "ssh_public_keys": '["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEKEYONLYFORDOCUMENTATION operator@example"]',
    "domain": "meters.example.com",
}


# --------------------------------------------------------------------------
# helpers


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip without it, or fail when
    PULSESTACK_REQUIRE_ALL=1."""
    candidate = Path(sys.executable).parent / name
    path = str(candidate) if candidate.exists() else shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (see .ci/tools-cluster.sh)")
    return path


def unquote(value):
    """python-hcl2 keeps the quotes of string literals (and of block labels)
    in recent versions, and wraps expressions in ${...}."""
    if isinstance(value, str):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1]
        if value.startswith("${") and value.endswith("}"):
            return value[2:-1]
    return value


def normalise(value):
    """The parse tree with labels, strings and expressions unwrapped and
    python-hcl2's bookkeeping keys dropped."""
    if isinstance(value, dict):
        return {
            unquote(key): normalise(item)
            for key, item in value.items()
            if not (isinstance(key, str) and key.startswith("__") and key.endswith("__"))
        }
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return unquote(value)


def load_tf(name: str) -> dict:
    with open(TF_DIR / name, encoding="utf-8") as handle:
        return normalise(hcl2.load(handle))


def console(workdir: Path, expression: str, variables: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    require_tool("terraform")
    return offline.console(workdir, expression, variables)


def console_text(workdir: Path, expression: str, variables: dict[str, str] | None = None) -> str:
    require_tool("terraform")
    return offline.console_text(workdir, expression, variables)


def layout_config(tmp_path: Path) -> Path:
    return offline.layout_config(tmp_path)


def render_inventory(tmp_path: Path, variables: dict[str, str]) -> str:
    require_tool("terraform")
    return offline.render_inventory(tmp_path, variables)


def hosts_of(inventory: dict, *path: str) -> list[str]:
    node = inventory["all"]
    for key in path:
        node = node["children"][key]
    return list((node.get("hosts") or {}).keys())


# --------------------------------------------------------------------------
# format and parse


def test_terraform_fmt_check() -> None:
    terraform = require_tool("terraform")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", "terraform/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=offline.tf_env(),
        timeout=120,
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


TF_FILES = sorted(p.name for p in TF_DIR.glob("*.tf"))


def test_expected_files_exist() -> None:
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md", "backend.hcl.example"):
        assert (TF_DIR / name).is_file(), name
    assert TEMPLATE.is_file()


@pytest.mark.parametrize("name", TF_FILES)
def test_every_tf_file_parses(name: str) -> None:
    parsed = load_tf(name)
    assert parsed, f"{name} is empty"


def test_backend_example_parses_and_names_the_s3_settings() -> None:
    with open(TF_DIR / "backend.hcl.example", encoding="utf-8") as handle:
        parsed = normalise(hcl2.load(handle))
    for key in ("bucket", "key", "region", "endpoints"):
        assert key in parsed, key
    text = (TF_DIR / "backend.hcl.example").read_text()
    assert "secret_key" not in text and "access_key" not in text, "credentials belong in the environment"


# --------------------------------------------------------------------------
# versions and variables


def test_versions_pin_the_scaleway_provider_and_use_an_s3_backend() -> None:
    parsed = load_tf("versions.tf")
    terraform_block = parsed["terraform"][0]
    providers = terraform_block["required_providers"][0]
    scaleway = providers["scaleway"]
    assert unquote(scaleway["source"]) == "scaleway/scaleway"
    version = unquote(scaleway["version"])
    assert re.fullmatch(r"~> \d+\.\d+(\.\d+)?", version), version
    assert "s3" in terraform_block["backend"][0]


def variables() -> dict[str, dict]:
    result = {}
    for entry in load_tf("variables.tf")["variable"]:
        result.update(entry)
    return result


REQUIRED_VARIABLES = {
    "project_id",
    "region",
    "zones",
    "manager_count",
    "worker_count",
    "manager_instance_type",
    "worker_instance_type",
    "image",
    "admin_cidrs",
    "ssh_public_keys",
    "udp_ingest_port",
    "domain",
    "private_network_cidr",
}


def test_the_variables_the_issue_asks_for_exist() -> None:
    missing = REQUIRED_VARIABLES - variables().keys()
    assert not missing, missing


def test_every_variable_has_a_description_and_a_type() -> None:
    for name, spec in variables().items():
        assert len(unquote(spec.get("description", ""))) > 10, f"{name}: no description"
        assert "type" in spec, f"{name}: no type"


def validations(spec: dict) -> list[str]:
    return [unquote(v["condition"]) for v in spec.get("validation", [])]


def test_counts_ports_and_networks_are_validated() -> None:
    spec = variables()
    for name in ("manager_count", "worker_count", "udp_ingest_port", "zones", "admin_cidrs", "ssh_public_keys",
                 "domain", "private_network_cidr"):
        assert validations(spec[name]), f"{name} has no validation"
    assert any("% 2 == 1" in c for c in validations(spec["manager_count"])), "managers must be validated odd"
    assert unquote(spec["udp_ingest_port"]["default"]) == 2204
    assert spec["manager_count"]["default"] == 3 and spec["worker_count"]["default"] == 3


# --------------------------------------------------------------------------
# security groups


def security_group() -> dict:
    for resource in load_tf("main.tf")["resource"]:
        if "scaleway_instance_security_group" in resource:
            return resource["scaleway_instance_security_group"]["node"]
    raise AssertionError("no scaleway_instance_security_group.node")


def test_security_groups_drop_by_default_and_open_only_the_expected_ports() -> None:
    group = security_group()
    assert unquote(group["inbound_default_policy"]) == "drop"
    rules = [d["inbound_rule"] for d in group["dynamic"] if "inbound_rule" in d]
    assert not group.get("inbound_rule"), "rules are generated by the dynamic blocks below"
    seen = {"ssh": False, "udp": False, "swarm": False}
    for rule in rules:
        for_each = str(rule["for_each"])
        content = rule["content"][0]
        ip_range = str(unquote(content["ip_range"]))
        if "admin_cidrs" in for_each:
            seen["ssh"] = True
            assert content["port"] == 22 and unquote(content["protocol"]) == "TCP"
            assert "admin_cidrs" not in ip_range or "inbound_rule.value" in ip_range
        elif "udp_ingest_port" in for_each:
            seen["udp"] = True
            assert "ingest" in for_each
            assert ip_range == "0.0.0.0/0" and unquote(content["protocol"]) == "UDP"
        elif "swarm_ports" in for_each:
            seen["swarm"] = True
            assert "private_network_cidr" in ip_range, "swarm ports only from the private network"
        else:
            raise AssertionError(f"unexpected inbound rule {rule}")
    assert all(seen.values()), seen
    # HTTP(S) only through the load balancer: open on a public IP, it would bypass the client address the
    # balancer passes (PROXY protocol) and with it Traefik's admin allow-list.
    assert not any(port in str(rule["for_each"]) for rule in rules for port in ("80", "443")), rules
    main = (TF_DIR / "main.tf").read_text()
    for port in ("2377", "7946", "4789"):
        assert re.search(rf'protocol = "(TCP|UDP)", port = {port} ', main), port


def test_load_balancer_forwards_http_and_https_as_tcp_to_the_managers() -> None:
    resources = {}
    for resource in load_tf("main.tf")["resource"]:
        for kind, named in resource.items():
            resources.setdefault(kind, {}).update(named)
    backend = resources["scaleway_lb_backend"]["edge"]
    assert unquote(backend["forward_protocol"]) == "tcp"
    assert "current_edges" in str(backend["server_ips"])
    assert "80" in str(backend["for_each"]) and "443" in str(backend["for_each"])
    assert "lb_proxy_protocol" in str(backend["proxy_protocol"])
    variables = {name: spec for block in load_tf("variables.tf")["variable"] for name, spec in block.items()}
    assert unquote(variables["lb_proxy_protocol"]["default"]) == "v2", "Traefik needs the client's address"
    assert "scaleway_vpc_private_network" in resources and "scaleway_instance_private_nic" in resources
    assert "scaleway_instance_ip" in resources


# --------------------------------------------------------------------------
# rendering with terraform console


SAMPLE_MANAGERS = """[for i in range(3) : {
  name = "pulsestack-manager-${i + 1}", role = "manager", public_ip = "192.0.2.${i + 1}",
  private_ip = "172.16.16.${10 + i}", zone = "fr-par-${i + 1}", instance_type = "PLAY2-SMALL",
  generation = 1, retiring = false, labels = { zone = "fr-par-${i + 1}", edge = "true" },
  data_volume = { id = "fr-par-${i + 1}/0000000${i}-0000-0000-0000-000000000000", size_gb = 50 }
}]"""
SAMPLE_WORKERS = """[for i in range(3) : {
  name = "pulsestack-worker-${i + 1}", role = "worker", public_ip = "192.0.2.${i + 11}",
  private_ip = "172.16.16.${30 + i}", zone = "fr-par-${i + 1}", instance_type = "PLAY2-SMALL",
  generation = 1, retiring = false,
  labels = merge({ zone = "fr-par-${i + 1}", ingest = "true" }, i == 0 ? { database = "true" } : {}),
  data_volume = { id = "fr-par-${i + 1}/1000000${i}-0000-0000-0000-000000000000", size_gb = i == 0 ? 500 : 50 }
}]"""


def render_template_only(tmp_path: Path, managers: str, workers: str) -> dict:
    work = tmp_path / "tpl"
    work.mkdir()
    shutil.copy(TEMPLATE, work / TEMPLATE.name)
    (work / "main.tf").write_text(
        "locals {\n"
        f"  managers = {managers}\n"
        f"  workers  = {workers}\n"
        "}\n"
    )
    expression = (
        f'templatefile("{TEMPLATE.name}", {{ managers = local.managers, workers = local.workers, '
        'ssh_user = "admin", domain = "meters.example.com", private_network_cidr = "172.16.16.0/22", '
        'admin_cidrs = ["203.0.113.7/32"], udp_ingest_port = 2204, lb_proxy_protocol = "v2" })'
    )
    return yaml.safe_load(console_text(work, expression))


def test_inventory_template_renders_with_sample_values(tmp_path: Path) -> None:
    inventory = render_template_only(tmp_path, SAMPLE_MANAGERS, SAMPLE_WORKERS)
    managers = hosts_of(inventory, "swarm", "managers")
    workers = hosts_of(inventory, "swarm", "workers")
    assert managers == ["pulsestack-manager-1", "pulsestack-manager-2", "pulsestack-manager-3"]
    assert workers == ["pulsestack-worker-1", "pulsestack-worker-2", "pulsestack-worker-3"]
    first = inventory["all"]["children"]["swarm"]["children"]["managers"]["hosts"]["pulsestack-manager-1"]
    assert first["ansible_host"] == "192.0.2.1"
    assert first["swarm_advertise_addr"] == "172.16.16.10"
    assert first["swarm_node_labels"] == {"zone": "fr-par-1", "edge": "true"}
    assert first["data_volume_id"] == "00000000-0000-0000-0000-000000000000", "the volume's id without its zone"
    assert first["data_volume_size_gb"] == 50
    assert hosts_of(inventory, "ingest") == workers
    assert hosts_of(inventory, "database") == ["pulsestack-worker-1"]
    assert hosts_of(inventory, "retiring") == []
    all_vars = inventory["all"]["vars"]
    assert all_vars["pulsestack_udp_ingest_port"] == 2204
    assert all_vars["pulsestack_private_network_cidr"] == "172.16.16.0/22"
    assert all_vars["pulsestack_admin_cidrs"] == ["203.0.113.7/32"]
    assert all_vars["ansible_user"] == "admin"


def test_nodes_come_up_with_the_admin_user_ansible_connects_as(tmp_path: Path) -> None:
    """Not root: cloud-init creates ssh_user with the project's keys and passwordless sudo, the inventory
    connects as it, and the sshd role then refuses root logins (ansible/roles/common)."""
    assert unquote(variables()["ssh_user"]["default"]) == "admin"
    inventory = yaml.safe_load(EXAMPLE_INVENTORY.read_text())
    assert inventory["all"]["vars"]["ansible_user"] == "admin"
    work = tmp_path / "cloud-init"
    work.mkdir()
    shutil.copy(TF_DIR / "templates" / "cloud-init.yaml.tftpl", work)
    keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLE one@example", "ssh-rsa AAAAB3NzaEXAMPLE two@example"]
    text = console_text(work, f'templatefile("cloud-init.yaml.tftpl", {{ ssh_user = "admin", '
                              f'ssh_public_keys = {json.dumps(keys)} }})')
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    assert config["users"] == [{
        "name": "admin", "shell": "/bin/bash", "groups": ["sudo"], "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": True, "ssh_authorized_keys": keys,
    }]
    main = (TF_DIR / "main.tf").read_text()
    assert '"cloud-init" = templatefile("${path.module}/templates/cloud-init.yaml.tftpl"' in main


def test_inventory_template_renders_without_workers(tmp_path: Path) -> None:
    inventory = render_template_only(tmp_path, SAMPLE_MANAGERS, "[]")
    assert hosts_of(inventory, "swarm", "workers") == []
    assert len(hosts_of(inventory, "swarm", "managers")) == 3


def test_layout_spreads_nodes_over_zones_with_labels(tmp_path: Path) -> None:
    inventory = yaml.safe_load(render_inventory(tmp_path, EXAMPLE_VARS))
    managers = inventory["all"]["children"]["swarm"]["children"]["managers"]["hosts"]
    workers = inventory["all"]["children"]["swarm"]["children"]["workers"]["hosts"]
    assert list(managers) == [f"pulsestack-manager-{i}" for i in (1, 2, 3)]
    assert list(workers) == [f"pulsestack-worker-{i}" for i in (1, 2, 3)]
    assert [h["scaleway_zone"] for h in managers.values()] == ["fr-par-1", "fr-par-2", "fr-par-3"]
    assert [h["scaleway_zone"] for h in workers.values()] == ["fr-par-1", "fr-par-2", "fr-par-3"]
    addresses = [h["swarm_advertise_addr"] for h in list(managers.values()) + list(workers.values())]
    assert len(set(addresses)) == 6 and all(a.startswith("172.16.16.") for a in addresses)
    public = [h["ansible_host"] for h in list(managers.values()) + list(workers.values())]
    assert len(set(public)) == 6 and all(a.startswith("192.0.2.") for a in public)
    assert all(h["swarm_node_labels"].get("edge") == "true" for h in managers.values())
    assert all(h["swarm_node_labels"].get("ingest") == "true" for h in workers.values())
    databases = [n for n, h in {**managers, **workers}.items() if h["swarm_node_labels"].get("database") == "true"]
    assert databases == ["pulsestack-worker-1"] == hosts_of(inventory, "database")
    assert hosts_of(inventory, "ingest") == list(workers)
    every = {**managers, **workers}
    nats = {n: sorted(k for k in h["swarm_node_labels"] if k.startswith("nats-")) for n, h in every.items()}
    assert all(len(keys) == 1 for keys in nats.values()), "a node may run one NATS server only"
    assert nats["pulsestack-manager-2"] == nats["pulsestack-worker-2"] == ["nats-2"]
    assert sorted(k for keys in nats.values() for k in keys) == sorted(["nats-1", "nats-2", "nats-3"] * 2)


def test_layout_lists_a_retiring_generation_during_a_migration(tmp_path: Path) -> None:
    variables = dict(EXAMPLE_VARS)
    variables.update(
        {
            "generation": "2",
            "manager_instance_type": "PRO2-S",
            "worker_instance_type": "PRO2-M",
            "retiring_generation": (
                '{ generation = 1, manager_count = 3, worker_count = 3, '
                'manager_instance_type = "PLAY2-SMALL", worker_instance_type = "PLAY2-SMALL" }'
            ),
        }
    )
    inventory = yaml.safe_load(render_inventory(tmp_path, variables))
    managers = hosts_of(inventory, "swarm", "managers")
    assert managers[:3] == [f"pulsestack-g2-manager-{i}" for i in (1, 2, 3)], "new generation first"
    assert managers[3:] == [f"pulsestack-manager-{i}" for i in (1, 2, 3)]
    retiring = hosts_of(inventory, "retiring")
    old = [f"pulsestack-manager-{i}" for i in (1, 2, 3)] + [f"pulsestack-worker-{i}" for i in (1, 2, 3)]
    assert sorted(retiring) == sorted(old)
    swarm = inventory["all"]["children"]["swarm"]["children"]
    hosts = {**swarm["managers"]["hosts"], **swarm["workers"]["hosts"]}
    addresses = [h["swarm_advertise_addr"] for h in hosts.values()]
    assert len(set(addresses)) == 12, "two generations never share a private address"
    assert hosts["pulsestack-g2-worker-1"]["scaleway_instance_type"] == "PRO2-M"
    assert sorted(hosts_of(inventory, "database")) == ["pulsestack-g2-worker-1", "pulsestack-worker-1"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("manager_count", "2", "odd"),
        ("manager_count", "9", "odd"),
        ("worker_count", "-1", "worker_count"),
        ("udp_ingest_port", "4789", "udp_ingest_port"),
        ("admin_cidrs", '["0.0.0.0/0"]', "SSH must not be open"),
        ("zones", '["nl-ams-1"]', "belong to the region"),
    ],
)
def test_validation_rejects_bad_values(tmp_path: Path, name: str, value: str, message: str) -> None:
    variables = dict(EXAMPLE_VARS)
    variables[name] = value
    result = console(layout_config(tmp_path), "local.nodes", variables)
    output = result.stdout + result.stderr
    assert "Invalid value for variable" in output, output[-2000:]
    assert message in output


def test_example_inventory_is_what_terraform_outputs(tmp_path: Path) -> None:
    rendered = render_inventory(tmp_path, EXAMPLE_VARS)
    assert EXAMPLE_INVENTORY.read_text() == rendered, (
        "ansible/inventories/example/hosts.yml differs from what outputs.tf renders; "
        "regenerate it (see ansible/README.md)"
    )


def test_data_volumes_hold_the_streams_the_stack_sizes_and_the_database(tmp_path: Path) -> None:
    """Every node's data volume holds a replica of every stream as pulsestack/bus/topology.py sizes them for
    the same peak and windows; the database node's also holds the readings of the retention period."""
    from pulsestack.bus.topology import RAW_BYTES_PER_READING, needed

    peak, backlog_hours, replay_hours = 2500, 3, 24
    variables = dict(EXAMPLE_VARS, peak_readings_per_second=str(peak), stream_backlog_hours=str(backlog_hours),
                     stream_replay_hours=str(replay_hours), meters="1000000", retention_months="12")
    inventory = yaml.safe_load(render_inventory(tmp_path, variables))
    swarm = inventory["all"]["children"]["swarm"]["children"]
    hosts = {**swarm["managers"]["hosts"], **swarm["workers"]["hosts"]}
    streams = sum(needed(peak, hours * 3600, per_reading) for hours, per_reading in (
        (backlog_hours, RAW_BYTES_PER_READING), (replay_hours, RAW_BYTES_PER_READING)))
    stream_gb = -(-13 * streams // (10 * 10**9)) + 4
    wal_gb = 16  # twice max_wal_size (pulsestack/store/postgresql.conf)
    database_gb = -(-13 * 1_000_000 * 24 * 3044 * 12 * 300 // (1000 * 10**9)) + wal_gb
    sizes = {name: host["data_volume_size_gb"] for name, host in hosts.items()}
    assert sizes.pop("pulsestack-worker-1") == stream_gb + database_gb
    assert {sizes.pop(f"pulsestack-manager-{i}") for i in (1, 2, 3)} == {stream_gb + 25}, "Prometheus's room"
    assert set(sizes.values()) == {stream_gb}, sizes
    assert all(host["data_volume_id"] == "" for host in hosts.values()), "the offline copy has no volumes"
    main = (TF_DIR / "main.tf").read_text()
    assert 'additional_volume_ids = [scaleway_block_volume.data[each.key].id]' in main
