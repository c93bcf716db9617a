# Security group of the gateway ENIs. Security groups filter forwarded packets too, so
# besides the tunnel the VPC's own traffic to hybrid pods (which the route tables send to
# the leader's ENI) must be allowed in.

locals {
  vxlan_port = 8472

  # VPC -> hybrid pods through the gateway: every protocol except the VXLAN port (only the
  # hybrid nodes may send tunnel packets) and the metrics port (closed unless
  # metrics_ingress_cidrs is given).
  vpc_forward_rules = merge(
    { for c in var.vpc_cidrs : "icmp ${c}" => { cidr = c, protocol = "icmp", from = -1, to = -1 } },
    { for c in var.vpc_cidrs : "tcp-low ${c}" => { cidr = c, protocol = "tcp", from = 0, to = var.metrics_port - 1 } },
    { for c in var.vpc_cidrs : "tcp-high ${c}" => { cidr = c, protocol = "tcp", from = var.metrics_port + 1, to = 65535 } },
    { for c in var.vpc_cidrs : "udp-low ${c}" => { cidr = c, protocol = "udp", from = 0, to = local.vxlan_port - 1 } },
    { for c in var.vpc_cidrs : "udp-high ${c}" => { cidr = c, protocol = "udp", from = local.vxlan_port + 1, to = 65535 } },
  )
}

resource "aws_security_group" "this" {
  name_prefix = "${var.name}-"
  description = "hybrid-gateway: VXLAN from hybrid nodes, VPC traffic to hybrid pods"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

# The tunnel: UDP 8472 from the hybrid nodes' addresses, nothing else.
resource "aws_vpc_security_group_ingress_rule" "vxlan" {
  for_each          = toset(var.remote_node_cidrs)
  security_group_id = aws_security_group.this.id
  description       = "VXLAN (Cilium VTEP) from hybrid nodes"
  ip_protocol       = "udp"
  from_port         = local.vxlan_port
  to_port           = local.vxlan_port
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "vpc_forward" {
  for_each          = local.vpc_forward_rules
  security_group_id = aws_security_group.this.id
  description       = "VPC traffic forwarded to hybrid pods"
  ip_protocol       = each.value.protocol
  from_port         = each.value.from
  to_port           = each.value.to
  cidr_ipv4         = each.value.cidr
  tags              = local.tags
}

# Prometheus scrapes, only from the given CIDRs (none by default: the port stays closed).
resource "aws_vpc_security_group_ingress_rule" "metrics" {
  for_each          = toset(var.metrics_ingress_cidrs)
  security_group_id = aws_security_group.this.id
  description       = "hybrid-gateway metrics"
  ip_protocol       = "tcp"
  from_port         = var.metrics_port
  to_port           = var.metrics_port
  cidr_ipv4         = each.value
  tags              = local.tags
}

# Out: the EC2, DynamoDB, STS and EKS APIs, IMDS is link-local (not filtered), packets from
# hybrid pods to the VPC, and the tunnel back to the hybrid nodes.
resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.this.id
  description       = "all outbound"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}
