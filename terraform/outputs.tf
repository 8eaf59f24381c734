################################################################################
# Ansible inventory
################################################################################

locals {
  inventory_nodes = {
    for name, n in local.nodes : name => {
      name          = name
      role          = n.role
      zone          = n.zone
      generation    = n.generation
      retiring      = n.retiring
      instance_type = n.instance_type
      public_ip     = scaleway_instance_ip.node[name].address
      data_volume   = { id = scaleway_block_volume.data[name].id, size_gb = n.data_volume_gb }
      private_ip    = n.private_ip
      labels        = n.labels
    }
  }

  # Current generation first: on a fresh cluster the first manager listed is
  # the one that initialises the swarm.
  inventory_managers = [for n in concat(
    [for name, n in local.inventory_nodes : n if n.role == "manager" && !n.retiring],
    [for name, n in local.inventory_nodes : n if n.role == "manager" && n.retiring],
  ) : n]
  inventory_workers = [for n in concat(
    [for name, n in local.inventory_nodes : n if n.role == "worker" && !n.retiring],
    [for name, n in local.inventory_nodes : n if n.role == "worker" && n.retiring],
  ) : n]
}

output "ansible_inventory" {
  description = "Ansible inventory in YAML (managers, workers, ingest, database, retiring). Save it with: terraform output -raw ansible_inventory > ../ansible/inventories/production/hosts.yml"
  value = templatefile("${path.module}/templates/inventory.yml.tftpl", {
    managers             = local.inventory_managers
    workers              = local.inventory_workers
    ssh_user             = var.ssh_user
    domain               = var.domain
    private_network_cidr = var.private_network_cidr
    admin_cidrs          = var.admin_cidrs
    udp_ingest_port      = var.udp_ingest_port
    lb_proxy_protocol    = var.lb_proxy_protocol
  })
}

################################################################################
# Addresses
################################################################################

output "load_balancer_ip" {
  description = "Public IPv4 of the load balancer: the A record of the domain and its subdomains (HTTP/HTTPS, Sigfox callbacks, dashboards)."
  value       = scaleway_lb_ip.edge.ip_address
}

output "udp_ingest_ips" {
  description = "Public IPv4 addresses of the ingest nodes: one A record each under the UDP ingest hostname (DNS round robin for devices)."
  value       = [for n in local.ingest_nodes : scaleway_instance_ip.node[n.name].address]
}

output "udp_ingest_endpoint" {
  description = "Host name and port devices are configured with."
  value       = "${var.udp_ingest_hostname}.${var.domain}:${var.udp_ingest_port}"
}

output "nodes" {
  description = "Every node with its role, zone, generation, public and private address and swarm labels."
  value       = local.inventory_nodes
}

output "private_network_id" {
  description = "ID of the private network carrying the swarm traffic."
  value       = scaleway_vpc_private_network.swarm.id
}
