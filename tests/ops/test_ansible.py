"""Static checks of the Ansible roles and playbooks in ansible/.

- ansible-lint with the production profile, offline (the collections come
  with the `ansible` package from PyPI);
- `ansible-playbook --syntax-check` of every playbook against the example
  inventory (whose vault file is decrypted with the documented example
  password);
- every variable a role's tasks, handlers and templates use is defined:
  its own variables in its defaults/main.yml with a comment right above
  each, derived ones in vars/main.yml, by register or set_fact; others are
  Ansible's own or another role's;
- every default is used somewhere;
- the roles' templates render for the example inventory.

A missing tool skips its tests, or fails them when PULSESTACK_REQUIRE_ALL=1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.unavailable import unavailable

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
ROLES_DIR = ANSIBLE_DIR / "roles"
PLAYBOOKS_DIR = ANSIBLE_DIR / "playbooks"
EXAMPLE_INVENTORY = ANSIBLE_DIR / "inventories" / "example" / "hosts.yml"
EXAMPLE_VAULT = ANSIBLE_DIR / "inventories" / "example" / "group_vars" / "all" / "vault.yml"
# Documented in ansible/README.md; it protects fake example values only.
EXAMPLE_VAULT_PASSWORD = "pulsestack-example-vault"

ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "tasks" / "main.yml").is_file())
PLAYBOOKS = sorted(p.name for p in PLAYBOOKS_DIR.glob("*.yml"))


# --------------------------------------------------------------------------
# helpers


def require_tool(name: str) -> str:
    """Path of a command-line tool (next to this Python first); skip without
    it, or fail when PULSESTACK_REQUIRE_ALL=1."""
    candidate = Path(sys.executable).parent / name
    path = str(candidate) if candidate.exists() else shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (pip install ansible ansible-lint)")
    return path


@pytest.fixture(scope="module")
def ansible_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("ansible")
    password_file = work / "example-vault-password"
    password_file.write_text(EXAMPLE_VAULT_PASSWORD + "\n")
    password_file.chmod(0o600)
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_VAULT_PASSWORD_FILE": str(password_file),
            "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(work / "remote-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "NO_COLOR": "1",
            # Never reach for Galaxy: the collections come with `ansible`.
            "ANSIBLE_GALAXY_DISABLE_GPG_VERIFY": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


class Loader(yaml.SafeLoader):
    """YAML loader that knows Ansible's !unsafe and !vault tags."""


Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
Loader.add_constructor("!vault", lambda loader, node: loader.construct_scalar(node))


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=Loader)


# --------------------------------------------------------------------------
# ansible-lint and syntax check


def test_ansible_lint_production_profile_passes(ansible_env: dict[str, str]) -> None:
    lint = require_tool("ansible-lint")
    result = subprocess.run(
        [lint, "--offline", "--profile", "production", "--nocolor", "-q"],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        env=ansible_env,
        timeout=900,
    )
    assert result.returncode == 0, f"ansible-lint failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax_check(playbook: str, ansible_env: dict[str, str]) -> None:
    ansible_playbook = require_tool("ansible-playbook")
    result = subprocess.run(
        [ansible_playbook, "--syntax-check", "-i", str(EXAMPLE_INVENTORY.relative_to(ANSIBLE_DIR)),
         f"playbooks/{playbook}"],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        env=ansible_env,
        timeout=300,
    )
    assert result.returncode == 0, f"{playbook}:\n{result.stdout}\n{result.stderr}"


def test_the_runbook_playbooks_exist() -> None:
    expected = {
        "site.yml",
        "deploy.yml",
        "add-node.yml",
        "remove-node.yml",
        "scale.yml",
        "migrate-node-type.yml",
        "backup.yml",
        "restore.yml",
        "restore-dump.yml",
    }
    assert expected <= set(PLAYBOOKS)
    assert {"common", "docker", "swarm", "stack"} <= set(ROLES)
    assert (ANSIBLE_DIR / "ansible.cfg").is_file()
    assert (ANSIBLE_DIR / "README.md").is_file()


# --------------------------------------------------------------------------
# example inventory and vault


def test_example_vault_is_encrypted_and_holds_only_placeholders(ansible_env: dict[str, str]) -> None:
    assert EXAMPLE_VAULT.read_text().startswith("$ANSIBLE_VAULT;"), "the example vault file must be encrypted"
    vault = require_tool("ansible-vault")
    result = subprocess.run(
        [vault, "view", str(EXAMPLE_VAULT)], capture_output=True, text=True, env=ansible_env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    values = yaml.safe_load(result.stdout)
    # Every secret stack.yml declares, by the names deploy/secrets.sh makes: an operator copies the shape.
    listed = subprocess.run(["bash", str(ROOT / "deploy" / "secrets.sh"), "--list"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert set(values["vault_stack_secrets"]) == set(listed)

    def leaves(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from leaves(item)
        else:
            yield str(value)

    for leaf in leaves(values):
        assert "EXAMPLE" in leaf or leaf in {"admin", "system"}, f"not an obvious placeholder: {leaf!r}"


def test_example_inventory_has_the_swarm_groups() -> None:
    inventory = load_yaml(EXAMPLE_INVENTORY)
    swarm = inventory["all"]["children"]["swarm"]["children"]
    managers = swarm["managers"]["hosts"]
    assert len(managers) % 2 == 1
    for hosts in (managers, swarm["workers"]["hosts"]):
        for name, host in hosts.items():
            assert host["ansible_host"] and host["swarm_advertise_addr"], name
            assert isinstance(host["swarm_node_labels"], dict), name
    assert inventory["all"]["children"]["database"]["hosts"], "one node is labelled for the database"
    assert inventory["all"]["children"]["ingest"]["hosts"], "some nodes are labelled for ingest"


# --------------------------------------------------------------------------
# variables of the roles

# Ansible's own variables and Jinja globals a role may use without defining.
MAGIC = {
    "item",
    "inventory_hostname",
    "inventory_hostname_short",
    "hostvars",
    "groups",
    "group_names",
    "play_hosts",
    "playbook_dir",
    "role_path",
    "omit",
    "lookup",
    "query",
    "q",
    "now",
    "undef",
    "range",
    "dict",
    "lipsum",
    "cycler",
    "joiner",
    "namespace",
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
}

TEMPLATED_KEYS = {"when", "until", "changed_when", "failed_when"}


def require_module(name: str):
    """Imports a Python module; skip without it, or fail when
    PULSESTACK_REQUIRE_ALL=1."""
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        unavailable(f"Python module {name} is not installed (pip install ansible)")


class AnyName(dict):
    """Stands for Ansible's filters and tests: every name exists."""

    def __contains__(self, key) -> bool:
        return True

    def __missing__(self, key):
        return lambda *args, **kwargs: None

    def get(self, key, default=None):
        return self[key]


def variables_in(source: str) -> set[str]:
    jinja2 = require_module("jinja2")
    meta = require_module("jinja2.meta")
    env = jinja2.Environment(extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"])
    env.filters = AnyName(env.filters)
    env.tests = AnyName(env.tests)
    return set(meta.find_undeclared_variables(env.parse(source)))


def expressions_in_task_data(data, key: str | None = None):
    """Every templated piece of a task file: strings with {{ }} or {% %},
    and the bare expressions of when/until/changed_when/failed_when/that."""
    if isinstance(data, dict):
        for child_key, value in data.items():
            yield from expressions_in_task_data(value, child_key)
    elif isinstance(data, list):
        for value in data:
            if key in TEMPLATED_KEYS | {"that"} and isinstance(value, str):
                yield "{{ " + value + " }}"
            else:
                yield from expressions_in_task_data(value, key)
    elif isinstance(data, str):
        if key in TEMPLATED_KEYS | {"that"} and "{{" not in data:
            yield "{{ " + data + " }}"
        elif "{{" in data or "{%" in data:
            yield data


def defined_by_tasks(data) -> set[str]:
    """Names a task file defines: register, set_fact, loop_var/index_var,
    task-level vars and include vars."""
    names: set[str] = set()
    if isinstance(data, dict):
        if isinstance(data.get("register"), str):
            names.add(data["register"])
        for key in ("ansible.builtin.set_fact", "set_fact"):
            if isinstance(data.get(key), dict):
                names.update(k for k in data[key] if k != "cacheable")
        control = data.get("loop_control")
        if isinstance(control, dict):
            for key in ("loop_var", "index_var"):
                if isinstance(control.get(key), str):
                    names.add(control[key])
        if isinstance(data.get("vars"), dict):
            names.update(data["vars"])
        for value in data.values():
            names |= defined_by_tasks(value)
    elif isinstance(data, list):
        for value in data:
            names |= defined_by_tasks(value)
    return names


def role_files(role: str, folder: str, pattern: str) -> list[Path]:
    return sorted((ROLES_DIR / role / folder).glob(pattern))


def defaults_of(role: str) -> dict:
    path = ROLES_DIR / role / "defaults" / "main.yml"
    return (load_yaml(path) or {}) if path.is_file() else {}


def vars_of(role: str) -> dict:
    path = ROLES_DIR / role / "vars" / "main.yml"
    return (load_yaml(path) or {}) if path.is_file() else {}


def role_definitions(role: str) -> set[str]:
    names = set(defaults_of(role)) | set(vars_of(role))
    for path in role_files(role, "tasks", "*.yml") + role_files(role, "handlers", "*.yml"):
        names |= defined_by_tasks(load_yaml(path))
    return names


def role_uses(role: str) -> dict[str, set[str]]:
    """Variable -> files of the role (tasks, handlers, templates) using it."""
    uses: dict[str, set[str]] = {}
    for path in role_files(role, "tasks", "*.yml") + role_files(role, "handlers", "*.yml"):
        for expression in expressions_in_task_data(load_yaml(path)):
            for name in variables_in(expression):
                uses.setdefault(name, set()).add(str(path.relative_to(ANSIBLE_DIR)))
    for path in role_files(role, "templates", "**/*.j2"):
        for name in variables_in(path.read_text()):
            uses.setdefault(name, set()).add(str(path.relative_to(ANSIBLE_DIR)))
    return uses


def owner_of(name: str) -> str | None:
    """The role whose prefix a variable carries (longest prefix wins)."""
    owners = [role for role in ROLES if name.startswith(role + "_")]
    return max(owners, key=len) if owners else None


@pytest.mark.parametrize("role", ROLES)
def test_every_variable_a_role_uses_is_defined(role: str) -> None:
    definitions = {r: role_definitions(r) for r in ROLES}
    own = definitions[role]
    problems = []
    for name, files in sorted(role_uses(role).items()):
        if name in MAGIC or name.startswith("ansible_") or name in own:
            continue
        owner = owner_of(name)
        if owner is not None and name in definitions[owner]:
            continue
        where = ", ".join(sorted(files))
        if owner == role or owner is None:
            problems.append(f"{name} (in {where}) is not in roles/{role}/defaults/main.yml")
        else:
            problems.append(f"{name} (in {where}) is not defined by role {owner}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_prefixed_and_commented(role: str) -> None:
    path = ROLES_DIR / role / "defaults" / "main.yml"
    assert path.is_file(), f"roles/{role}/defaults/main.yml is missing"
    lines = path.read_text().splitlines()
    defaults = defaults_of(role)
    assert defaults, f"roles/{role} has no defaults"
    problems = []
    for name in defaults:
        if not name.startswith(role + "_"):
            problems.append(f"{name}: not prefixed with {role}_")
        index = next(i for i, line in enumerate(lines) if re.match(rf"^{re.escape(name)}:", line))
        if index == 0 or not lines[index - 1].lstrip().startswith("#"):
            problems.append(f"{name}: no comment on the line above")
    assert not problems, "\n".join(problems)


def test_every_default_is_used_somewhere() -> None:
    used: set[str] = set()
    for role in ROLES:
        used |= set(role_uses(role))
        for path in (ROLES_DIR / role / "defaults" / "main.yml", ROLES_DIR / role / "vars" / "main.yml"):
            if path.is_file():
                used |= variables_in(path.read_text())
    for path in PLAYBOOKS_DIR.glob("*.yml"):
        text = path.read_text()
        used |= {name for name in re.findall(r"\b([a-z][a-z0-9_]*)\b", text)}
    unused = [f"{role}: {name}" for role in ROLES for name in defaults_of(role) if name not in used]
    assert not unused, "defaults nobody reads:\n" + "\n".join(unused)


# --------------------------------------------------------------------------
# templates rendered for the example inventory

RENDER_PLAYBOOK = """\
- name: Render the role templates for one host
  hosts: "{{ target }}"
  gather_facts: false
  vars_files:
    - ROLES/common/defaults/main.yml
    - ROLES/docker/defaults/main.yml
  tasks:
    - name: Render the templates
      delegate_to: localhost
      ansible.builtin.template:
        src: "ROLES/{{ item.src }}"
        dest: "OUT/{{ target }}-{{ item.dest }}"
        mode: "0644"
      loop:
        - { src: common/templates/nftables.conf.j2, dest: nftables.conf }
        - { src: docker/templates/daemon.json.j2, dest: daemon.json }
        - { src: common/templates/52pulsestack-unattended-upgrades.j2, dest: unattended-upgrades }
        - { src: common/templates/chrony-pulsestack.conf.j2, dest: chrony.conf }
        - { src: common/templates/modules-load.conf.j2, dest: modules.conf }
        - { src: common/templates/sshd-pulsestack.conf.j2, dest: sshd.conf }
"""


@pytest.fixture(scope="module")
def rendered(ansible_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    ansible_playbook = require_tool("ansible-playbook")
    work = tmp_path_factory.mktemp("render")
    out = work / "out"
    out.mkdir()
    playbook = work / "render.yml"
    playbook.write_text(RENDER_PLAYBOOK.replace("ROLES", str(ROLES_DIR)).replace("OUT", str(out)))
    for target in ("pulsestack-manager-1", "pulsestack-worker-1"):
        result = subprocess.run(
            [
                ansible_playbook,
                "-i",
                str(EXAMPLE_INVENTORY),
                str(playbook),
                "-e",
                f"target={target}",
                "-e",
                json.dumps({"ansible_python_interpreter": sys.executable}),
                "-c",
                "local",
            ],
            cwd=ANSIBLE_DIR,
            capture_output=True,
            text=True,
            env=ansible_env,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_daemon_json_rotates_logs_and_exposes_metrics(rendered: Path) -> None:
    daemon = json.loads((rendered / "pulsestack-worker-1-daemon.json").read_text())
    assert daemon["log-driver"] == "json-file"
    assert daemon["log-opts"] == {"max-size": "10m", "max-file": "5"}
    assert daemon["metrics-addr"].endswith(":9323")
    assert "registry-mirrors" not in daemon and "live-restore" not in daemon
    assert daemon["no-new-privileges"] is True, "no process in a container gains privileges (CIS 2.18)"


def test_sshd_takes_keys_only_and_no_root_login(rendered: Path) -> None:
    # The example inventory connects as the admin user Terraform's cloud-init creates, so root needs no login.
    lines = (rendered / "pulsestack-manager-1-sshd.conf").read_text().splitlines()
    for setting in ("PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin no"):
        assert setting in lines, setting


def test_firewall_matches_the_security_groups(rendered: Path) -> None:
    manager = (rendered / "pulsestack-manager-1-nftables.conf").read_text()
    worker = (rendered / "pulsestack-worker-1-nftables.conf").read_text()
    for text in (manager, worker):
        assert "flush ruleset" not in text, "Docker's own tables must survive a reload"
        assert "policy drop;" in text
        assert "elements = { 203.0.113.0/24 }" in text, "SSH from the admin networks only"
        assert "ip saddr @ssh_v4 tcp dport 22 accept" in text
        assert "elements = { 172.16.16.0/22 }" in text
        assert "ip saddr @private_v4 tcp dport { 2377, 7946, 9100, 9323 } accept" in text
        assert "ip saddr @private_v4 udp dport { 7946, 4789 } accept" in text
    assert "tcp dport { 80, 443 } accept" in manager
    assert "udp dport { 2204 } accept" not in manager
    assert "udp dport { 2204 } accept" in worker, "the ingest port on the ingest nodes"
    assert "tcp dport { 80, 443 } accept" not in worker


def test_unattended_upgrades_spare_the_engine(rendered: Path) -> None:
    text = (rendered / "pulsestack-worker-1-unattended-upgrades").read_text()
    assert "#clear Unattended-Upgrade::Package-Blacklist;" in text
    assert '"docker.io";' in text and '"containerd";' in text
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in text
    assert "label=Debian-Security" in text


def test_kernel_parameters_give_udp_large_buffers() -> None:
    defaults = defaults_of("common")
    assert defaults["common_sysctl_enabled"] is True
    assert defaults["common_sysctls"]["net.core.rmem_max"] >= 8 * 1024 * 1024
    assert defaults["common_sysctls"]["net.core.rmem_default"] >= 8 * 1024 * 1024


def test_docker_comes_from_dockers_repository_by_default() -> None:
    # Debian's docker.io 20.10 CLI cannot deploy stack.yml's one-shot job.
    defaults = defaults_of("docker")
    assert defaults["docker_package_source"] == "docker"
    assert "docker.io" in defaults["docker_debian_packages"]
    assert {"python3-docker", "python3-jsondiff", "python3-yaml"} <= set(defaults["docker_python_packages"])
    assert defaults["docker_ce_repository_url"] == "", "no repository host is written into the repo"


# --------------------------------------------------------------------------
# the stack role's placement filter (which images a new node pulls)


def load_placement_filter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("placement", ROLES_DIR / "stack" / "filter_plugins" / "placement.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_new_node_pulls_only_the_images_of_services_it_may_run() -> None:
    stack = yaml.safe_load((ROOT / "stack.yml").read_text())
    services = [
        {"image": name, "constraints": (s.get("deploy", {}).get("placement") or {}).get("constraints")}
        for name, s in stack["services"].items()
    ]
    placeable = load_placement_filter().placeable_images
    inventory = yaml.safe_load(EXAMPLE_INVENTORY.read_text())
    swarm = inventory["all"]["children"]["swarm"]["children"]
    database_worker = swarm["workers"]["hosts"]["pulsestack-worker-1"]["swarm_node_labels"]
    other_worker = swarm["workers"]["hosts"]["pulsestack-worker-2"]["swarm_node_labels"]
    manager = swarm["managers"]["hosts"]["pulsestack-manager-3"]["swarm_node_labels"]

    on_database_worker = set(placeable(services, "worker", database_worker))
    assert {"postgres", "ingest-udp", "nats-1", "raw-processor", "node-exporter"} <= on_database_worker
    assert not {"prometheus", "alertmanager", "nats-2", "nats-3"} & on_database_worker
    on_other_worker = set(placeable(services, "worker", other_worker))
    assert "postgres" not in on_other_worker and "nats-2" in on_other_worker
    on_manager = set(placeable(services, "manager", manager))
    assert {"prometheus", "alertmanager", "nats-3"} <= on_manager and "ingest-udp" not in on_manager
    # A constraint the filter cannot judge before the node joins counts as met.
    unknown = [{"image": "x", "constraints": ["node.hostname != elsewhere", "node.labels.ssd != true"]}]
    assert placeable(unknown, "worker", {}) == ["x"]
    assert placeable(unknown, "worker", {"ssd": "true"}) == []


# --------------------------------------------------------------------------
# the stack role's files: one archive, unpacked where it differs

FILES_PLAYBOOK = """
- name: Put the stack's files in place
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Copy the stack file and the files it refers to
      ansible.builtin.include_role:
        name: stack
        tasks_from: files
"""


def test_the_stack_files_arrive_once_and_edits_on_the_manager_are_put_back(
    ansible_env: dict[str, str], tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        unavailable("needs root (the stack's files are owned by root on the manager)")
    ansible_playbook = require_tool("ansible-playbook")
    playbook = tmp_path / "files.yml"
    playbook.write_text(FILES_PLAYBOOK)
    remote = tmp_path / "manager" / "pulsestack"
    extra = {
        "ansible_python_interpreter": sys.executable,
        "stack_source_dir": str(ROOT),
        "stack_remote_dir": str(remote),
        "stack_override_files": ["tests/swarm/stack.override.yml"],
    }

    def changed() -> int:
        run = subprocess.run(
            [ansible_playbook, "-i", "localhost,", "-c", "local", str(playbook), "-e", json.dumps(extra)],
            cwd=ANSIBLE_DIR, capture_output=True, text=True, env={**ansible_env, "ANSIBLE_ROLES_PATH": str(ROLES_DIR)},
            timeout=300,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        return int(re.search(r"localhost\s*:.*changed=(\d+)", run.stdout)[1])  # type: ignore[index]

    assert changed() == 2, "the folder, then the files"
    prometheus = remote / "monitoring" / "prometheus" / "prometheus.yml"
    assert prometheus.read_bytes() == (ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_bytes()
    assert (remote / "tests" / "swarm" / "stack.override.yml").is_file()
    assert stat.S_IMODE(prometheus.stat().st_mode) == 0o640
    assert stat.S_IMODE(prometheus.parent.stat().st_mode) == 0o750
    assert changed() == 0, "an unchanged stack reports no change"
    prometheus.write_text("edited on the manager\n")
    assert changed() == 1
    assert prometheus.read_bytes() == (ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_bytes()
