# ---------------------------------------------------------------------------------------------
# Identity and placement
# ---------------------------------------------------------------------------------------------

variable "name" {
  description = "Name prefix of every resource (launch template, ASG, role, security group)."
  type        = string
  default     = "hybrid-gateway"

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,31}$", var.name))
    error_message = "name must be 1-32 characters of letters, digits and '-', starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC of the EKS cluster; the gateways are placed in it."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "subnet_ids" {
  description = "Private subnets for the gateways, in at least two Availability Zones (one gateway per AZ survives an AZ outage)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2 && length(distinct(var.subnet_ids)) == length(var.subnet_ids)
    error_message = "subnet_ids needs at least 2 distinct subnets (in two Availability Zones)."
  }
  validation {
    condition     = alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "Every subnet id must look like subnet-0123456789abcdef0."
  }
}

variable "gateway_count" {
  description = "Number of gateway instances (one leader, the others standby). The ASG keeps exactly this many."
  type        = number
  default     = 2

  validation {
    condition     = var.gateway_count >= 2 && var.gateway_count <= 5 && floor(var.gateway_count) == var.gateway_count
    error_message = "gateway_count must be a whole number from 2 to 5: one leader plus at least one standby."
  }
}

variable "instance_type" {
  description = "EC2 instance type. Network bandwidth is what matters; its architecture must match var.architecture."
  type        = string
  default     = "c7i.large"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like c7i.large."
  }
}

variable "architecture" {
  description = "CPU architecture of the AMI and the package: x86_64 or arm64 (Graviton; use the aarch64 package)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be \"x86_64\" or \"arm64\"."
  }
}

variable "os" {
  description = "Operating system: al2023 (Amazon Linux 2023, installs the .rpm with dnf) or ubuntu (24.04, installs the .deb with apt)."
  type        = string
  default     = "al2023"

  validation {
    condition     = contains(["al2023", "ubuntu"], var.os)
    error_message = "os must be \"al2023\" or \"ubuntu\"."
  }
}

variable "ami_id" {
  description = "Pin an AMI instead of the latest one from the public SSM parameter (recommended for production: an AMI change then goes through an instance refresh you trigger)."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must look like ami-0123456789abcdef0, or be null."
  }
}

variable "root_volume_size" {
  description = "Root EBS volume size in GiB (encrypted gp3)."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 200
    error_message = "root_volume_size must be between 8 and 200 GiB."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Package
# ---------------------------------------------------------------------------------------------

variable "package_url" {
  description = "HTTPS URL of the hybrid-gateway package (.rpm for al2023, .deb for ubuntu). Set this or package_s3_uri."
  type        = string
  default     = null

  validation {
    condition     = var.package_url == null || can(regex("^https://[^ ]+\\.(rpm|deb)$", var.package_url))
    error_message = "package_url must be an https:// URL ending in .rpm or .deb."
  }
}

variable "package_sha256" {
  description = "SHA-256 of the package file (sha256sum, 64 lowercase hex digits). User data verifies the download against it and installs nothing else. Together with package_url/package_s3_uri this is the package version the gateways run: an upgrade changes both, which makes a new launch template version and an instance refresh (see README \"Upgrades\")."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.package_sha256))
    error_message = "package_sha256 must be the package's SHA-256: 64 lowercase hex digits (sha256sum FILE)."
  }
}

variable "package_s3_uri" {
  description = "s3://bucket/key of the hybrid-gateway package; the instance role gets s3:GetObject on that object only. Set this or package_url."
  type        = string
  default     = null

  validation {
    condition     = var.package_s3_uri == null || can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^ ]+\\.(rpm|deb)$", var.package_s3_uri))
    error_message = "package_s3_uri must look like s3://bucket/path/hybrid-gateway.rpm (or .deb)."
  }
}

# ---------------------------------------------------------------------------------------------
# Networks (written to [gateway] and used by the security group)
# ---------------------------------------------------------------------------------------------

variable "vpc_cidrs" {
  description = "Every CIDR of the VPC (primary and secondary): config gateway.vpc_cidrs. At most 8 (Cilium's VTEP limit)."
  type        = list(string)

  validation {
    condition     = length(var.vpc_cidrs) >= 1 && length(var.vpc_cidrs) <= 8
    error_message = "vpc_cidrs needs 1 to 8 CIDRs."
  }
  validation {
    condition     = alltrue([for c in var.vpc_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":")])
    error_message = "Every vpc_cidrs entry must be an IPv4 CIDR such as 10.0.0.0/16."
  }
  # The checks below mirror `hybrid-gateway check-config`, so a plan fails where the
  # instances' user data would (after replacing a gateway).
  validation {
    condition     = try(alltrue([for c in var.vpc_cidrs : cidrhost(c, 0) == split("/", c)[0]]), false)
    error_message = "Every vpc_cidrs entry must be a network address without host bits (10.250.0.0/16, not 10.250.3.0/16)."
  }
  validation {
    condition     = try(length(distinct([for c in var.vpc_cidrs : split("/", c)[1]])) == 1, false)
    error_message = "vpc_cidrs must all have the same prefix length: Cilium applies one mask to all VTEP CIDRs; list the VPC's ranges split to one length."
  }
  validation {
    condition = try(alltrue(flatten([for i, a in var.vpc_cidrs : [for j, b in var.vpc_cidrs : j <= i || (
      cidrhost("${split("/", a)[0]}/${min(tonumber(split("/", a)[1]), tonumber(split("/", b)[1]))}", 0) !=
      cidrhost("${split("/", b)[0]}/${min(tonumber(split("/", a)[1]), tonumber(split("/", b)[1]))}", 0)
    )]])), false)
    error_message = "vpc_cidrs entries must not overlap each other: list each range once."
  }
}

variable "hybrid_pod_cidrs" {
  description = "Pod CIDRs handed out to hybrid nodes (Cilium cluster-pool): config gateway.hybrid_pod_cidrs. The VPC route tables point these at the leader."
  type        = list(string)

  validation {
    condition     = length(var.hybrid_pod_cidrs) >= 1
    error_message = "hybrid_pod_cidrs needs at least one CIDR."
  }
  validation {
    condition     = alltrue([for c in var.hybrid_pod_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":")])
    error_message = "Every hybrid_pod_cidrs entry must be an IPv4 CIDR such as 192.168.32.0/23."
  }
  validation {
    condition     = try(alltrue([for c in var.hybrid_pod_cidrs : cidrhost(c, 0) == split("/", c)[0]]), false)
    error_message = "Every hybrid_pod_cidrs entry must be a network address without host bits (192.168.32.0/23, not 192.168.33.0/23)."
  }
  validation {
    condition = try(alltrue(flatten([for i, a in var.hybrid_pod_cidrs : [for j, b in var.hybrid_pod_cidrs : j <= i || (
      cidrhost("${split("/", a)[0]}/${min(tonumber(split("/", a)[1]), tonumber(split("/", b)[1]))}", 0) !=
      cidrhost("${split("/", b)[0]}/${min(tonumber(split("/", a)[1]), tonumber(split("/", b)[1]))}", 0)
    )]])), false)
    error_message = "hybrid_pod_cidrs entries must not overlap each other: list each range once."
  }
  # Cross-variable (Terraform >= 1.9).
  validation {
    condition = try(alltrue(flatten([for a in var.hybrid_pod_cidrs : [for b in var.vpc_cidrs :
      cidrhost("${split("/", a)[0]}/${min(tonumber(split("/", a)[1]), tonumber(split("/", b)[1]))}", 0) !=
      cidrhost("${split("/", b)[0]}/${min(tonumber(split("/", a)[1]), tonumber(split("/", b)[1]))}", 0)
    ]])), false)
    error_message = "hybrid_pod_cidrs must not overlap vpc_cidrs: hybrid pod CIDRs must lie outside the VPC, or VPC traffic would be sent into the tunnel."
  }
}

variable "remote_node_cidrs" {
  description = "CIDRs of the hybrid nodes' own addresses (on-premises). The only sources allowed to reach the VXLAN port UDP 8472."
  type        = list(string)

  validation {
    condition     = length(var.remote_node_cidrs) >= 1
    error_message = "remote_node_cidrs needs at least one CIDR: without it no hybrid node can reach the tunnel."
  }
  validation {
    condition     = alltrue([for c in var.remote_node_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":") && c != "0.0.0.0/0"])
    error_message = "Every remote_node_cidrs entry must be an IPv4 CIDR narrower than 0.0.0.0/0."
  }
}

variable "metrics_ingress_cidrs" {
  description = "CIDRs allowed to scrape the metrics port (e.g. a Prometheus subnet). Empty (default): the port stays closed to the network."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.metrics_ingress_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":")])
    error_message = "Every metrics_ingress_cidrs entry must be an IPv4 CIDR."
  }
}

variable "metrics_port" {
  description = "TCP port of the daemon's Prometheus endpoint. With metrics_ingress_cidrs the config gets [metrics] listen = \"0.0.0.0:<port>\"; without, the daemon keeps its default 127.0.0.1:10080."
  type        = number
  default     = 10080

  validation {
    condition     = var.metrics_port >= 1024 && var.metrics_port <= 65535 && var.metrics_port != 8472
    error_message = "metrics_port must be 1024-65535 and not the VXLAN port 8472."
  }
}

# ---------------------------------------------------------------------------------------------
# EKS
# ---------------------------------------------------------------------------------------------

variable "cluster_name" {
  description = "EKS cluster name. Its endpoint and CA are read at plan time and written to config [kubernetes.eks]; an access entry maps the gateway role to the Kubernetes group kubernetes_group. The cluster's authentication mode must be API or API_AND_CONFIG_MAP."
  type        = string

  validation {
    condition     = can(regex("^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$", var.cluster_name))
    error_message = "cluster_name must be a valid EKS cluster name (1-100 characters of letters, digits, '-', '_')."
  }
}

variable "kubernetes_group" {
  description = "Kubernetes group of the access entry. packaging/kubernetes/rbac.yaml binds the group hybrid-gateway: change both together."
  type        = string
  default     = "hybrid-gateway"

  validation {
    condition     = length(var.kubernetes_group) > 0 && !startswith(var.kubernetes_group, "system:")
    error_message = "kubernetes_group must be non-empty and must not start with \"system:\" (EKS rejects those)."
  }
}

variable "election_namespace" {
  description = "Namespace of the election Lease (config election.namespace); the RBAC manifest creates it."
  type        = string
  default     = "hybrid-gateway"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.election_namespace))
    error_message = "election_namespace must be a Kubernetes namespace name (DNS label)."
  }
}

variable "election_mode" {
  description = "Config election.mode: \"active-standby\" (one leader for every route table, the default) or \"per-az\" (one leader per Availability Zone: each managed route table must be associated with subnets of one AZ; apply packaging/kubernetes/rbac-per-az.yaml as well). With the DynamoDB lock, per-az also lets the role use the per-shard lock items \"<lock_key>-<az>\"."
  type        = string
  default     = "active-standby"

  validation {
    condition     = contains(["active-standby", "per-az"], var.election_mode)
    error_message = "election_mode must be \"active-standby\" or \"per-az\"."
  }
}

# ---------------------------------------------------------------------------------------------
# VPC route tables (config [aws])
# ---------------------------------------------------------------------------------------------

variable "route_table_ids" {
  description = "Route tables the leader keeps pointed at itself for every hybrid_pod_cidrs entry (config aws.route_table_ids). The role may write routes in exactly these (and in tables tagged route_table_tag)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for r in var.route_table_ids : can(regex("^rtb-[0-9a-f]{8,17}$", r))])
    error_message = "Every route_table_ids entry must look like rtb-0123456789abcdef0."
  }
}

variable "route_table_tag" {
  description = "\"key=value\" tag naming further managed route tables (config aws.route_table_tag). null (default): \"hybrid-gateway.io/managed=<cluster_name>\", so two clusters in one account never manage each other's tables; \"\" to manage only route_table_ids. The daemon only considers tables of its own VPC, and the IAM policy's conditions use the same tag and the VPC."
  type        = string
  default     = null

  validation {
    condition     = var.route_table_tag == null || var.route_table_tag == "" || can(regex("^[^=]+=.+$", var.route_table_tag))
    error_message = "route_table_tag must be \"key=value\" (non-empty key and value), \"\" (no tag), or null (derived from cluster_name)."
  }
}

variable "takeover" {
  description = "Which existing routes for a hybrid pod CIDR the leader may overwrite: \"owned\" (only other gateways' and blackholes) or \"any\" (config aws.takeover)."
  type        = string
  default     = "owned"

  validation {
    condition     = contains(["owned", "any"], var.takeover)
    error_message = "takeover must be \"owned\" or \"any\"."
  }
}

variable "cleanup_on_shutdown" {
  description = "Config aws.cleanup_on_shutdown: delete this gateway's VPC routes on a final stop. Set true before removing the gateways (terraform destroy) so no route points at a terminated instance."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------
# DynamoDB lock (config [election.dynamodb])
# ---------------------------------------------------------------------------------------------

variable "enable_dynamodb_lock" {
  description = "Fence leadership with a DynamoDB lock besides the Kubernetes Lease (recommended: a partitioned API server cannot produce two leaders writing VPC routes)."
  type        = bool
  default     = true
}

variable "create_lock_table" {
  description = "Create the lock table here (PAY_PER_REQUEST, TTL on expires_at). false: use an existing table named lock_table_name."
  type        = bool
  default     = true
}

variable "lock_table_name" {
  description = "DynamoDB lock table name (config election.dynamodb.table). null (default): \"<cluster_name>-hybrid-gateway-lock\", one table per cluster."
  type        = string
  default     = null

  validation {
    condition     = var.lock_table_name == null || can(regex("^[a-zA-Z0-9_.-]{3,255}$", var.lock_table_name))
    error_message = "lock_table_name must be 3-255 characters of a-z, A-Z, 0-9, '_', '-', '.'."
  }
}

variable "lock_key" {
  description = "Partition key value of the lock item (config election.dynamodb.key). The IAM policy limits the role to this one item (and, with election_mode = \"per-az\", to \"<lock_key>-<az>\"). null (default): \"<cluster_name>/hybrid-gateway-leader\", so clusters sharing a table never share a lock."
  type        = string
  default     = null

  validation {
    condition     = var.lock_key == null || try(length(var.lock_key) > 0 && length(var.lock_key) <= 1024 && !can(regex("[*?]", var.lock_key)), false)
    error_message = "lock_key must be 1-1024 characters, without * or ? (the IAM condition matches keys with StringLike)."
  }
}

# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------

variable "attach_ssm_managed_policy" {
  description = "Attach AmazonSSMManagedInstanceCore so the instances can be reached by Session Manager and upgraded with the SSM document packaging/ssm/hybrid-gateway-upgrade.yaml."
  type        = bool
  default     = true
}

variable "ready_timeout" {
  description = "Seconds a new instance has to install the package and report ready (`hybrid-gateway status`) before its launch lifecycle hook is abandoned and the instance terminated (an instance refresh then fails and rolls back)."
  type        = number
  default     = 600

  validation {
    condition     = var.ready_timeout >= 120 && var.ready_timeout <= 3600 && floor(var.ready_timeout) == var.ready_timeout
    error_message = "ready_timeout must be a whole number of seconds from 120 to 3600."
  }
}

variable "unhealthy_after" {
  description = "Seconds `hybrid-gateway status` may fail in a row on a running gateway before the instance reports itself Unhealthy to the Auto Scaling group (set-instance-health), which replaces it."
  type        = number
  default     = 120

  validation {
    condition     = var.unhealthy_after >= 30 && var.unhealthy_after <= 3600 && floor(var.unhealthy_after) == var.unhealthy_after
    error_message = "unhealthy_after must be a whole number of seconds from 30 to 3600."
  }
}

variable "instance_warmup" {
  description = "Seconds an instance refresh waits after a new gateway is InService before counting it healthy (it is InService only once ready: the launch lifecycle hook waits for that), and the grace period before its self-reported health counts."
  type        = number
  default     = 180

  validation {
    condition     = var.instance_warmup >= 60 && var.instance_warmup <= 3600
    error_message = "instance_warmup must be between 60 and 3600 seconds."
  }
}

variable "extra_config" {
  description = "Raw TOML appended to /etc/hybrid-gateway/config.toml (sections the module does not model). The daemon rejects unknown keys, so user data validates the file with check-config before starting."
  type        = string
  default     = ""
}
