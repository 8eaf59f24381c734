################################################################################
# Node layout
#
# Every node is described once here; the servers, their addresses, security
# groups and the generated Ansible inventory all derive from local.nodes.
################################################################################

locals {
  # Generations alternate between two blocks of private host numbers, so the
  # new nodes of a migration never collide with the ones they replace.
  generations = concat(
    [{
      generation            = var.generation
      retiring              = false
      manager_count         = var.manager_count
      worker_count          = var.worker_count
      manager_instance_type = var.manager_instance_type
      worker_instance_type  = var.worker_instance_type
    }],
    var.retiring_generation == null ? [] : [merge(var.retiring_generation, { retiring = true })],
  )

  # The first generation keeps the plain names (pulsestack-manager-1); later
  # ones are suffixed (pulsestack-g2-manager-1).
  node_list = flatten([
    for g in local.generations : concat(
      [for i in range(g.manager_count) : {
        name          = g.generation == 1 ? format("%s-manager-%d", var.name, i + 1) : format("%s-g%d-manager-%d", var.name, g.generation, i + 1)
        role          = "manager"
        index         = i
        generation    = g.generation
        retiring      = g.retiring
        zone          = var.zones[i % length(var.zones)]
        instance_type = g.manager_instance_type
        private_ip    = cidrhost(var.private_network_cidr, 10 + ((g.generation + 1) % 2) * 512 + i)
      }],
      [for i in range(g.worker_count) : {
        name          = g.generation == 1 ? format("%s-worker-%d", var.name, i + 1) : format("%s-g%d-worker-%d", var.name, g.generation, i + 1)
        role          = "worker"
        index         = i
        generation    = g.generation
        retiring      = g.retiring
        zone          = var.zones[i % length(var.zones)]
        instance_type = g.worker_instance_type
        private_ip    = cidrhost(var.private_network_cidr, 30 + ((g.generation + 1) % 2) * 512 + i)
      }],
    )
  ])

  # Within each generation: which role carries the ingest and database labels.
  database_role = { for g in local.generations : g.generation => (var.database_node_role == "worker" && g.worker_count > 0 ? "worker" : "manager") }
  ingest_roles  = { for g in local.generations : g.generation => (var.ingest_node_role == "all" || (var.ingest_node_role == "worker" && g.worker_count == 0) ? ["manager", "worker"] : [var.ingest_node_role]) }

  # Every node may run a NATS server (one of the nats-N labels below), which holds a replica of every
  # stream: RAW for the backlog window, RAW_REPLAY for the replay window, at the provisioned peak and the
  # bytes per reading of pulsestack/bus/streams.py (RAW_BYTES_PER_READING; tests/ops/test_terraform.py
  # keeps them equal) with 30 % headroom, plus 4 GB
  # for QUARANTINE, DEAD and ALERTS (3.2 GB at most). Managers may run Prometheus (20 GB of retention by
  # size, stack.yml) and the small admin volumes: 25 GB more. The database node also holds PostgreSQL:
  # retention_months of every meter's readings at the measured bytes per reading, with 30 % headroom, and
  # pg_wal: twice max_wal_size (8 GB, pulsestack/store/postgresql.conf), room for an archive outage to be
  # noticed (PgWalGrowing) before PostgreSQL stops. See docs/durability.md.
  stream_gb = ceil(1.3 * var.peak_readings_per_second * 3600 * (
    var.stream_backlog_hours * 320 + var.stream_replay_hours * 320
  ) / 1e9) + 4
  database_gb = ceil(1.3 * var.meters * var.readings_per_meter_per_day * 30.44 * var.retention_months
  * var.stored_bytes_per_reading / 1e9) + 16

  nodes = {
    for n in local.node_list : n.name => merge(n, {
      ingest   = contains(local.ingest_roles[n.generation], n.role)
      database = n.role == local.database_role[n.generation] && n.index == 0
      data_volume_gb = local.stream_gb + (n.role == "manager" ? 25 : 0) + (
        n.role == local.database_role[n.generation] && n.index == 0 ? local.database_gb : 0
      )
      labels = merge(
        { zone = n.zone },
        contains(local.ingest_roles[n.generation], n.role) ? { ingest = "true" } : {},
        n.role == local.database_role[n.generation] && n.index == 0 ? { database = "true" } : {},
        n.role == "manager" ? { edge = "true" } : {},
        # Which of the three NATS servers may run here (stack.yml): one per
        # node, dealt out by index within each role, so manager-1 and
        # worker-1 carry nats-1. No node runs two servers, and a server whose
        # node fails has another node to start on.
        { "nats-${n.index % 3 + 1}" = "true" },
        lookup(var.extra_node_labels, n.name, {}),
      )
    })
  }

  # One security group per zone and role: Scaleway security groups are zonal.
  security_groups = {
    for pair in setproduct(var.zones, ["manager", "worker"]) : "${pair[0]}/${pair[1]}" => {
      zone   = pair[0]
      role   = pair[1]
      ingest = contains(var.ingest_node_role == "all" || (var.ingest_node_role == "worker" && var.worker_count == 0) ? ["manager", "worker"] : [var.ingest_node_role], pair[1])
    }
  }

  # Swarm's own ports: only ever accepted from the private network.
  swarm_ports = [
    { protocol = "TCP", port = 2377 }, # cluster management (managers)
    { protocol = "TCP", port = 7946 }, # node gossip
    { protocol = "UDP", port = 7946 }, # node gossip
    { protocol = "UDP", port = 4789 }, # VXLAN overlay data path
  ]

  # Both generations while a migration runs: the new ingest nodes join before
  # the old ones are drained.
  ingest_nodes  = [for name, n in local.nodes : n if n.ingest]
  current_edges = [for name, n in local.nodes : n if n.role == "manager" && !n.retiring]

  common_tags = concat(["pulsestack", "managed-by:terraform"], var.tags)
}

################################################################################
# SSH keys
################################################################################

resource "scaleway_iam_ssh_key" "admin" {
  count = length(var.ssh_public_keys)

  name       = format("%s-admin-%d", var.name, count.index + 1)
  public_key = var.ssh_public_keys[count.index]
  project_id = var.project_id
}

################################################################################
# Private network: all swarm traffic (Raft, gossip, VXLAN) stays on it
################################################################################

resource "scaleway_vpc" "this" {
  name   = var.name
  region = var.region
  tags   = local.common_tags
}

resource "scaleway_vpc_private_network" "swarm" {
  name   = "${var.name}-swarm"
  region = var.region
  vpc_id = scaleway_vpc.this.id
  tags   = local.common_tags

  ipv4_subnet {
    subnet = var.private_network_cidr
  }
}

# Fixed private addresses, so the inventory and the swarm advertise addresses
# are known before the servers boot and survive a server replacement.
resource "scaleway_ipam_ip" "node" {
  for_each = local.nodes

  address = each.value.private_ip
  region  = var.region
  tags    = concat(local.common_tags, ["node:${each.key}"])

  source {
    private_network_id = scaleway_vpc_private_network.swarm.id
  }
}

################################################################################
# Security groups (they filter the public interface)
#
# From the internet: the UDP ingest port on the ingest nodes and SSH from the
# admin networks only. HTTP(S) reaches the managers through the load balancer
# over the private network, never on their public IPs: a request that skipped
# the balancer would also skip the client address it passes (PROXY protocol)
# and with it Traefik's admin allow-list. Everything else inbound is dropped. Swarm ports are listed
# for the private subnet only; the host firewall (Ansible role "common")
# enforces the same rules on every interface.
################################################################################

resource "scaleway_instance_security_group" "node" {
  for_each = local.security_groups

  name                    = "${var.name}-${each.value.role}-${each.value.zone}"
  description             = "pulsestack ${each.value.role}s in ${each.value.zone}"
  zone                    = each.value.zone
  project_id              = var.project_id
  stateful                = true
  inbound_default_policy  = "drop"
  outbound_default_policy = "accept"
  enable_default_security = true
  tags                    = local.common_tags

  dynamic "inbound_rule" {
    for_each = var.admin_cidrs
    content {
      action   = "accept"
      protocol = "TCP"
      port     = 22
      ip_range = inbound_rule.value
    }
  }

  dynamic "inbound_rule" {
    for_each = each.value.ingest ? [var.udp_ingest_port] : []
    content {
      action   = "accept"
      protocol = "UDP"
      port     = inbound_rule.value
      ip_range = "0.0.0.0/0"
    }
  }

  dynamic "inbound_rule" {
    for_each = local.swarm_ports
    content {
      action   = "accept"
      protocol = inbound_rule.value.protocol
      port     = inbound_rule.value.port
      ip_range = var.private_network_cidr
    }
  }
}

################################################################################
# Nodes
################################################################################

# A routed public IPv4 per node: Ansible reaches every node over SSH from the
# admin networks; the ingest nodes' addresses are also what devices send to.
resource "scaleway_instance_ip" "node" {
  for_each = local.nodes

  zone       = each.value.zone
  project_id = var.project_id
  tags       = concat(local.common_tags, ["node:${each.key}"])
}

resource "scaleway_instance_server" "node" {
  for_each = local.nodes

  name              = each.key
  type              = each.value.instance_type
  image             = var.image
  zone              = each.value.zone
  project_id        = var.project_id
  ip_id             = scaleway_instance_ip.node[each.key].id
  security_group_id = scaleway_instance_security_group.node["${each.value.zone}/${each.value.role}"].id
  tags = concat(local.common_tags, [
    "role:${each.value.role}",
    "generation:${each.value.generation}",
  ])

  root_volume {
    size_in_gb            = var.root_volume_size_gb
    delete_on_termination = true
  }

  # NATS's and PostgreSQL's data: Ansible (role data_volume) mounts it where the engine keeps named volumes.
  additional_volume_ids = [scaleway_block_volume.data[each.key].id]

  # cloud-init at first boot: the admin user Ansible connects as. Root is left to its injected keys until
  # Ansible's sshd hardening refuses root logins (ssh_user is not root).
  user_data = var.ssh_user == "root" ? {} : {
    "cloud-init" = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
      ssh_user        = var.ssh_user
      ssh_public_keys = var.ssh_public_keys
    })
  }

  # The project's SSH keys are injected at first boot: they must exist first.
  depends_on = [scaleway_iam_ssh_key.admin]

  lifecycle {
    # A newer image behind the marketplace label must not replace a running
    # node (and its data) in place: new images and new instance types arrive
    # as a new generation, see var.generation and migrate-node-type.yml.
    # cloud-init reads user_data at first boot only: a change would not reach
    # a running node anyway.
    ignore_changes = [image, user_data]
  }
}

# A volume of its own per node, outliving the server: what JetStream and PostgreSQL hold is never on a
# root volume that goes with its instance.
resource "scaleway_block_volume" "data" {
  for_each = local.nodes

  name       = "${each.key}-data"
  size_in_gb = each.value.data_volume_gb
  iops       = var.data_volume_iops
  zone       = each.value.zone
  project_id = var.project_id
  tags       = concat(local.common_tags, ["node:${each.key}", "data"])
}

resource "scaleway_instance_private_nic" "node" {
  for_each = local.nodes

  server_id          = scaleway_instance_server.node[each.key].id
  private_network_id = scaleway_vpc_private_network.swarm.id
  ipam_ip_ids        = [scaleway_ipam_ip.node[each.key].id]
  zone               = each.value.zone
  tags               = local.common_tags
}

################################################################################
# Load balancer: HTTP(S) as TCP to Traefik on the managers
#
# Scaleway's load balancer forwards TCP and HTTP only; UDP devices reach the
# ingest nodes' public IPs directly (see README.md, "UDP devices").
################################################################################

resource "scaleway_lb_ip" "edge" {
  zone       = var.zones[0]
  project_id = var.project_id
  tags       = local.common_tags
}

resource "scaleway_lb" "edge" {
  name       = "${var.name}-edge"
  type       = var.lb_type
  zone       = var.zones[0]
  project_id = var.project_id
  ip_ids     = [scaleway_lb_ip.edge.id]
  tags       = local.common_tags

  private_network {
    private_network_id = scaleway_vpc_private_network.swarm.id
  }
}

resource "scaleway_lb_backend" "edge" {
  for_each = toset(["80", "443"])

  lb_id            = scaleway_lb.edge.id
  name             = "traefik-${each.key}"
  forward_protocol = "tcp"
  forward_port     = tonumber(each.key)
  # The managers' private addresses: the LB reaches them over the private
  # network, so the backends keep working while public IPs change.
  server_ips             = [for n in local.current_edges : n.private_ip]
  forward_port_algorithm = "leastconn"
  # "v2" lets Traefik see the client's address (its entrypoints must then
  # trust the PROXY protocol from the private network).
  proxy_protocol           = var.lb_proxy_protocol
  on_marked_down_action    = "shutdown_sessions"
  health_check_delay       = "5s"
  health_check_timeout     = "3s"
  health_check_max_retries = 2

  health_check_tcp {}

  depends_on = [scaleway_instance_private_nic.node]
}

resource "scaleway_lb_frontend" "edge" {
  for_each = scaleway_lb_backend.edge

  lb_id          = scaleway_lb.edge.id
  backend_id     = each.value.id
  name           = "edge-${each.key}"
  inbound_port   = tonumber(each.key)
  timeout_client = "60s"
}

################################################################################
# DNS (optional): load balancer for HTTP(S), round robin for UDP devices
################################################################################

locals {
  dns_prefix = var.manage_dns ? trimsuffix(trimsuffix(var.domain, coalesce(var.dns_zone, "-")), ".") : ""
}

resource "scaleway_domain_record" "edge" {
  for_each = var.manage_dns ? {
    apex     = local.dns_prefix
    wildcard = local.dns_prefix == "" ? "*" : "*.${local.dns_prefix}"
  } : {}

  dns_zone = var.dns_zone
  name     = each.value
  type     = "A"
  data     = scaleway_lb_ip.edge.ip_address
  ttl      = var.dns_ttl
}

resource "scaleway_domain_record" "ingest" {
  for_each = var.manage_dns ? { for n in local.ingest_nodes : n.name => n } : {}

  dns_zone = var.dns_zone
  name     = local.dns_prefix == "" ? var.udp_ingest_hostname : "${var.udp_ingest_hostname}.${local.dns_prefix}"
  type     = "A"
  data     = scaleway_instance_ip.node[each.key].address
  ttl      = var.dns_ttl
}
