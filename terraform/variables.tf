################################################################################
# Naming and placement
################################################################################

variable "name" {
  description = "Name prefix of every resource (servers are called <name>-manager-<n> and <name>-worker-<n>)."
  type        = string
  default     = "pulsestack"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "The name must be 3-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "project_id" {
  description = "Scaleway project that owns the resources. Null uses the provider default (SCW_DEFAULT_PROJECT_ID)."
  type        = string
  default     = null

  validation {
    condition     = var.project_id == null || can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.project_id))
    error_message = "The project_id must be a Scaleway project UUID."
  }
}

variable "region" {
  description = "Scaleway region. The private network, the load balancer's region and every zone below belong to it."
  type        = string
  default     = "fr-par"

  validation {
    condition     = contains(["fr-par", "nl-ams", "pl-waw"], var.region)
    error_message = "The region must be one of fr-par, nl-ams, pl-waw."
  }
}

variable "zones" {
  description = "Availability zones of the region over which nodes are spread round robin (manager n and worker n go to zones[(n-1) % length(zones)]). Use every zone the region has, so one zone lost never takes a majority of managers."
  type        = list(string)
  default     = ["fr-par-1", "fr-par-2", "fr-par-3"]

  validation {
    condition     = length(var.zones) >= 1 && length(distinct(var.zones)) == length(var.zones)
    error_message = "Give at least one zone, each zone once."
  }

  validation {
    condition     = alltrue([for z in var.zones : can(regex("^${var.region}-[1-9]$", z))])
    error_message = "Every zone must belong to the region (for example fr-par-1 for fr-par)."
  }
}

################################################################################
# Nodes
################################################################################

variable "manager_count" {
  description = "Number of swarm managers. Raft needs a majority, so an odd number: 3 tolerate the loss of 1, 5 the loss of 2."
  type        = number
  default     = 3

  validation {
    condition     = floor(var.manager_count) == var.manager_count && var.manager_count >= 1 && var.manager_count <= 7 && var.manager_count % 2 == 1
    error_message = "The manager_count must be an odd whole number between 1 and 7."
  }
}

variable "worker_count" {
  description = "Number of swarm workers (0 runs everything on the managers)."
  type        = number
  default     = 3

  validation {
    condition     = floor(var.worker_count) == var.worker_count && var.worker_count >= 0 && var.worker_count <= 400
    error_message = "The worker_count must be a whole number between 0 and 400."
  }
}

variable "manager_instance_type" {
  description = "Commercial instance type of the managers (they run Traefik, the monitoring and one NATS server each)."
  type        = string
  default     = "PLAY2-SMALL"

  validation {
    condition     = can(regex("^[A-Z0-9]+(-[A-Z0-9]+)+$", var.manager_instance_type))
    error_message = "The manager_instance_type must be a Scaleway commercial type such as PLAY2-SMALL or PRO2-S."
  }
}

variable "worker_instance_type" {
  description = "Commercial instance type of the workers (they run the ingesters, the processors and PostgreSQL)."
  type        = string
  default     = "PLAY2-SMALL"

  validation {
    condition     = can(regex("^[A-Z0-9]+(-[A-Z0-9]+)+$", var.worker_instance_type))
    error_message = "The worker_instance_type must be a Scaleway commercial type such as PLAY2-SMALL or PRO2-S."
  }
}

variable "image" {
  description = "Marketplace image label of every node. The Ansible roles expect Debian."
  type        = string
  default     = "debian_bookworm"

  validation {
    condition     = can(regex("^debian_[a-z]+$", var.image))
    error_message = "The image must be a Debian marketplace label such as debian_bookworm."
  }
}

variable "root_volume_size_gb" {
  description = "Size of each node's root volume in GB (system, Docker images, logs). NATS's and PostgreSQL's data live on the data volume (data_volume_iops and the sizing variables below)."
  type        = number
  default     = 40

  validation {
    condition     = floor(var.root_volume_size_gb) == var.root_volume_size_gb && var.root_volume_size_gb >= 20 && var.root_volume_size_gb <= 1000
    error_message = "The root_volume_size_gb must be a whole number between 20 and 1000."
  }
}

variable "peak_readings_per_second" {
  description = "Readings per second the deployment is provisioned for (the stack's PULSESTACK_PEAK_RATE): with the two windows below it sizes the streams, and so every node's data volume. The reference peak, 1,000/s, is 3.6 M meters reporting hourly."
  type        = number
  default     = 1000

  validation {
    condition     = var.peak_readings_per_second > 0
    error_message = "The peak_readings_per_second must be positive."
  }
}

variable "stream_backlog_hours" {
  description = "Hours of peak traffic RAW holds when the processors stop (the stack's PULSESTACK_BACKLOG_WINDOW, in hours)."
  type        = number
  default     = 6

  validation {
    condition     = var.stream_backlog_hours > 0
    error_message = "The stream_backlog_hours must be positive."
  }
}

variable "stream_replay_hours" {
  description = "Hours of peak traffic RAW_REPLAY keeps for a database restore (the stack's PULSESTACK_REPLAY_WINDOW, in hours)."
  type        = number
  default     = 12

  validation {
    condition     = var.stream_replay_hours > 0
    error_message = "The stream_replay_hours must be positive."
  }
}

variable "meters" {
  description = "Meters the deployment is provisioned for: with readings_per_meter_per_day, retention_months and stored_bytes_per_reading it sizes the database node's data volume."
  type        = number
  default     = 100000

  validation {
    condition     = var.meters > 0
    error_message = "The meters must be positive."
  }
}

variable "readings_per_meter_per_day" {
  description = "Readings a meter sends per day on average (24: hourly)."
  type        = number
  default     = 24

  validation {
    condition     = var.readings_per_meter_per_day > 0
    error_message = "The readings_per_meter_per_day must be positive."
  }
}

variable "retention_months" {
  description = "Months PostgreSQL keeps readings (the stack's PULSESTACK_RETENTION_READINGS_MONTHS and _PULSES_MONTHS)."
  type        = number
  default     = 24

  validation {
    condition     = var.retention_months >= 1
    error_message = "The retention_months must be at least 1."
  }
}

variable "stored_bytes_per_reading" {
  description = "Bytes on disk per stored reading, tables and indexes, as the benchmark measures it (bench/results/, 'on disk per reading'): 252 B measured for the readings table (bench/results/2026-12-05-vm-lean-storage.md), 300 B with the margin of the storage target."
  type        = number
  default     = 300

  validation {
    condition     = var.stored_bytes_per_reading > 0
    error_message = "The stored_bytes_per_reading must be positive."
  }
}

variable "data_volume_iops" {
  description = "IOPS of every node's data volume (Scaleway Block Storage: 5000 or 15000). JetStream and PostgreSQL fsync on every write."
  type        = number
  default     = 5000

  validation {
    condition     = contains([5000, 15000], var.data_volume_iops)
    error_message = "The data_volume_iops must be 5000 or 15000."
  }
}

variable "generation" {
  description = "Generation number of the current nodes. To move to other instance types, set retiring_generation to the running values, then raise this and change the types: Terraform adds the new nodes beside the old ones and ansible/playbooks/migrate-node-type.yml moves the swarm over."
  type        = number
  default     = 1

  validation {
    condition     = floor(var.generation) == var.generation && var.generation >= 1
    error_message = "The generation must be a whole number >= 1."
  }
}

variable "retiring_generation" {
  description = "The previous generation of nodes, kept running while a migration is in progress (null otherwise). Its nodes are listed in the inventory group 'retiring'. Set it back to null once migrate-node-type.yml has finished."
  type = object({
    generation            = number
    manager_count         = number
    worker_count          = number
    manager_instance_type = string
    worker_instance_type  = string
  })
  default = null

  validation {
    condition     = var.retiring_generation == null || try(var.retiring_generation.generation != var.generation, false)
    error_message = "The retiring generation must have another number than the current generation."
  }

  validation {
    condition     = var.retiring_generation == null || try(var.retiring_generation.manager_count % 2 == 1 && var.retiring_generation.worker_count >= 0, false)
    error_message = "The retiring generation must describe what runs: an odd manager_count and a worker_count >= 0."
  }
}

variable "extra_node_labels" {
  description = "Additional swarm node labels by node name, merged over the computed ones (zone, ingest, database, edge, nats-N), e.g. { \"pulsestack-worker-2\" = { gpu = \"true\" } }."
  type        = map(map(string))
  default     = {}
}

variable "tags" {
  description = "Tags added to every Scaleway resource that takes tags."
  type        = list(string)
  default     = []
}

################################################################################
# Roles of the nodes
################################################################################

variable "ingest_node_role" {
  description = "Which nodes get the swarm label ingest=true and accept the UDP ingest port from the internet: worker, manager or all. Their public IPs are what devices are sent to (DNS round robin)."
  type        = string
  default     = "worker"

  validation {
    condition     = contains(["worker", "manager", "all"], var.ingest_node_role)
    error_message = "The ingest_node_role must be worker, manager or all."
  }
}

variable "database_node_role" {
  description = "Role of the node labelled database=true (PostgreSQL and its volume): the first worker, or the first manager. Falls back to the first manager when there is no worker."
  type        = string
  default     = "worker"

  validation {
    condition     = contains(["worker", "manager"], var.database_node_role)
    error_message = "The database_node_role must be worker or manager."
  }
}

################################################################################
# Network and access
################################################################################

variable "private_network_cidr" {
  description = "IPv4 subnet of the private network that carries all swarm traffic (2377/tcp, 7946/tcp+udp, 4789/udp). Managers get host numbers 10.., workers 30.. (plus 512 on even generations, so two generations never collide)."
  type        = string
  default     = "172.16.16.0/22"

  validation {
    condition     = can(cidrhost(var.private_network_cidr, 0)) && can(regex("^(10|172|192)\\.", var.private_network_cidr)) && try(tonumber(split("/", var.private_network_cidr)[1]) <= 22 && tonumber(split("/", var.private_network_cidr)[1]) >= 16, false)
    error_message = "The private_network_cidr must be a private IPv4 subnet with a prefix between /16 and /22."
  }
}

variable "admin_cidrs" {
  description = "Networks allowed to reach SSH (22/tcp) on the nodes: the operators' and CI's addresses. The internet at large is refused."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0))])
    error_message = "Give at least one admin network in CIDR notation (e.g. 203.0.113.7/32)."
  }

  validation {
    condition     = !anytrue([for c in var.admin_cidrs : contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "SSH must not be open to the whole internet: list the admin networks."
  }
}

variable "ssh_public_keys" {
  description = "SSH public keys installed on every node (Scaleway injects the project's keys at boot). Ansible logs in with the matching private key."
  type        = list(string)

  validation {
    condition     = length(var.ssh_public_keys) > 0 && alltrue([for k in var.ssh_public_keys : can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com) [A-Za-z0-9+/=]+( .*)?$", k))])
    error_message = "Give at least one OpenSSH public key (ssh-ed25519, ssh-rsa or ecdsa-sha2-*)."
  }
}

variable "ssh_user" {
  description = "User Ansible logs in as: cloud-init creates it at first boot with the SSH keys and passwordless sudo, and Ansible's sshd hardening then closes root logins. \"root\" only for nodes created before this user existed (cloud-init runs once)."
  type        = string
  default     = "admin"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]*$", var.ssh_user))
    error_message = "The ssh_user must be a valid Unix user name."
  }
}

variable "udp_ingest_port" {
  description = "UDP port the devices send their readings to (published in host mode by ingest-udp on the ingest nodes)."
  type        = number
  default     = 2204

  validation {
    condition     = floor(var.udp_ingest_port) == var.udp_ingest_port && var.udp_ingest_port >= 1 && var.udp_ingest_port <= 65535 && !contains([4789, 7946], var.udp_ingest_port)
    error_message = "The udp_ingest_port must be a port number (1-65535) that swarm does not use (4789, 7946)."
  }
}

variable "domain" {
  description = "Domain the stack serves (Traefik routes <domain> and its subdomains; the load balancer's IP is its A record)."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.domain))
    error_message = "The domain must be a lowercase DNS name such as meters.example.com."
  }
}

variable "lb_type" {
  description = "Commercial type of the Scaleway load balancer that forwards 80/443 TCP to the managers."
  type        = string
  default     = "LB-S"

  validation {
    condition     = can(regex("^LB-(S|GP-M|GP-L|GP-XL)$", var.lb_type))
    error_message = "The lb_type must be LB-S, LB-GP-M, LB-GP-L or LB-GP-XL."
  }
}

variable "lb_proxy_protocol" {
  description = "PROXY protocol the load balancer speaks to Traefik: v2 (default) so Traefik sees client addresses, which its admin allow-list and rate limits need; Traefik trusts it from the private network only (the inventory passes both to the stack). none: every request seems to come from the load balancer."
  type        = string
  default     = "v2"

  validation {
    condition     = contains(["none", "v1", "v2"], var.lb_proxy_protocol)
    error_message = "The lb_proxy_protocol must be none, v1 or v2."
  }
}

################################################################################
# DNS (optional)
################################################################################

variable "manage_dns" {
  description = "Whether to create the DNS records in a Scaleway DNS zone: <domain> and *.<domain> to the load balancer, <udp_ingest_hostname>.<domain> round robin over the ingest nodes."
  type        = bool
  default     = false
}

variable "dns_zone" {
  description = "Scaleway DNS zone that holds the records when manage_dns is true (the domain itself or a parent of it)."
  type        = string
  default     = null

  validation {
    condition     = !var.manage_dns || (var.dns_zone != null && endswith(var.domain, coalesce(var.dns_zone, "-")))
    error_message = "With manage_dns = true, dns_zone must be set and be the domain or a parent of it."
  }
}

variable "udp_ingest_hostname" {
  description = "Name, relative to the domain, that devices resolve to find an ingest node (one A record per ingest node)."
  type        = string
  default     = "ingest"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.udp_ingest_hostname))
    error_message = "The udp_ingest_hostname must be one DNS label."
  }
}

variable "dns_ttl" {
  description = "TTL in seconds of the managed DNS records; short, so that a replaced ingest node leaves the round robin quickly."
  type        = number
  default     = 300

  validation {
    condition     = var.dns_ttl >= 60 && var.dns_ttl <= 86400
    error_message = "The dns_ttl must be between 60 and 86400 seconds."
  }
}
