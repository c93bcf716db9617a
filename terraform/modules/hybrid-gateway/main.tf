data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

# Endpoint and CA of the cluster, read at plan time and written into the config: the
# instances never call eks:DescribeCluster, so the role does not get it.
data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

# Latest AMI from AWS's / Canonical's public SSM parameters unless ami_id pins one.
data "aws_ssm_parameter" "ami" {
  count = var.ami_id == null ? 1 : 0
  name  = local.ami_ssm_parameter[var.os]
}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id

  ami_ssm_parameter = {
    al2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.architecture}"
    ubuntu = "/aws/service/canonical/ubuntu/server/24.04/stable/current/${var.architecture == "x86_64" ? "amd64" : "arm64"}/hvm/ebs-gp3/ami-id"
  }
  ami_id = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.ami[0].value)

  # Per-cluster defaults: two clusters in one account never share a lock or manage each
  # other's route tables. "" turns the tag off (route_table_ids only).
  route_table_tag = var.route_table_tag == null ? "hybrid-gateway.io/managed=${var.cluster_name}" : (var.route_table_tag == "" ? null : var.route_table_tag)
  lock_table_name = var.lock_table_name != null ? var.lock_table_name : "${var.cluster_name}-hybrid-gateway-lock"
  lock_key        = var.lock_key != null ? var.lock_key : "${var.cluster_name}/hybrid-gateway-leader"

  # "key=value" of the managed route table tag, split once for the config and the policy.
  route_table_tag_key   = local.route_table_tag == null ? null : split("=", local.route_table_tag)[0]
  route_table_tag_value = local.route_table_tag == null ? null : join("=", slice(split("=", local.route_table_tag), 1, length(split("=", local.route_table_tag))))

  lock_table_arn = "arn:${local.partition}:dynamodb:${local.region}:${local.account_id}:table/${local.lock_table_name}"
  vpc_arn        = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:vpc/${var.vpc_id}"

  # The launch lifecycle hook user data completes once the daemon is ready.
  launch_hook_name = "hybrid-gateway-ready"

  # The ENI tag the source/destination-check permission is conditioned on; the launch
  # template puts it on every gateway ENI.
  gateway_eni_tag_key = "hybrid-gateway.io/gateway"

  tags = merge({ "app.kubernetes.io/name" = "hybrid-gateway", "hybrid-gateway.io/cluster" = var.cluster_name }, var.tags)

  config_toml = templatefile("${path.module}/templates/config.toml.tftpl", {
    vpc_cidrs           = var.vpc_cidrs
    hybrid_pod_cidrs    = var.hybrid_pod_cidrs
    remote_node_cidrs   = var.remote_node_cidrs
    cluster_name        = var.cluster_name
    endpoint            = data.aws_eks_cluster.this.endpoint
    ca_file             = "/etc/hybrid-gateway/eks-ca.pem"
    region              = local.region
    route_table_ids     = var.route_table_ids
    route_table_tag     = local.route_table_tag
    takeover            = var.takeover
    cleanup_on_shutdown = var.cleanup_on_shutdown
    election_namespace  = var.election_namespace
    election_mode       = var.election_mode
    dynamodb_lock       = var.enable_dynamodb_lock
    lock_table_name     = local.lock_table_name
    lock_key            = local.lock_key
    metrics_listen      = length(var.metrics_ingress_cidrs) > 0 ? "0.0.0.0:${var.metrics_port}" : ""
    extra_config        = var.extra_config
  })

  user_data = templatefile("${path.module}/templates/user_data.sh.tftpl", {
    package_url     = var.package_url == null ? "" : var.package_url
    package_s3_uri  = var.package_s3_uri == null ? "" : var.package_s3_uri
    package_sha256  = var.package_sha256
    os              = var.os
    region          = local.region
    hook_name       = local.launch_hook_name
    ready_timeout   = var.ready_timeout
    unhealthy_after = var.unhealthy_after
    ca_pem          = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
    config_toml     = local.config_toml
  })
}

resource "aws_launch_template" "this" {
  name_prefix            = "${var.name}-"
  description            = "hybrid-gateway: EKS Hybrid Nodes VXLAN gateway"
  image_id               = local.ami_id
  instance_type          = var.instance_type
  update_default_version = true
  user_data              = base64encode(local.user_data)

  iam_instance_profile {
    arn = aws_iam_instance_profile.this.arn
  }

  # IMDSv2 only, and a hop limit of 1: the token cannot be fetched from a container or a
  # forwarded packet, only by processes on the instance (the daemon reads its identity,
  # region and local address there).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  network_interfaces {
    device_index                = 0
    associate_public_ip_address = false
    security_groups             = [aws_security_group.this.id]
    delete_on_termination       = true
  }

  block_device_mappings {
    device_name = var.os == "ubuntu" ? "/dev/sda1" : "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_size
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = var.name })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = var.name })
  }

  # The role may turn the source/destination check off only on ENIs carrying this tag.
  tag_specifications {
    resource_type = "network-interface"
    tags          = merge(local.tags, { Name = var.name, (local.gateway_eni_tag_key) = "true" })
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_autoscaling_group" "this" {
  name_prefix         = "${var.name}-"
  vpc_zone_identifier = var.subnet_ids
  min_size            = var.gateway_count
  # Room for an instance refresh to launch every replacement before it terminates an old
  # gateway (max_healthy_percentage = 200 below).
  max_size         = var.gateway_count * 2
  desired_capacity = var.gateway_count
  # EC2 status checks, plus the daemon's own health: each instance reports itself Unhealthy
  # (autoscaling:SetInstanceHealth, from user data's health reporter) when
  # `hybrid-gateway status` has failed for unhealthy_after seconds; the ASG replaces it.
  health_check_type         = "EC2"
  health_check_grace_period = var.instance_warmup
  # The subnets are in different AZs, and AZRebalance (on by default) keeps one gateway per AZ.
  default_instance_warmup = var.instance_warmup

  # A new instance stays Pending:Wait until user data has installed the package, started the
  # daemon and seen `hybrid-gateway status` report ready; then it completes this hook
  # (CONTINUE). A package or config that never becomes ready is ABANDONed (the reason is in
  # the instance's console output) or times out: the instance is terminated and never
  # counted healthy. An initial hook also gates the group's first instances.
  initial_lifecycle_hook {
    name                 = local.launch_hook_name
    lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
    default_result       = "ABANDON"
    heartbeat_timeout    = var.ready_timeout
  }

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  # A new launch template version (AMI, user data, package URL and SHA-256) replaces the
  # gateways launch-before-terminate: replacements are launched first (max 200 %), an old
  # gateway is terminated only once a replacement passed the readiness hook (min 100 %), and
  # a refresh whose replacements fail rolls back to the previous launch template version.
  # A bad package or config therefore never takes a working gateway down.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 200
      instance_warmup        = var.instance_warmup
      skip_matching          = true
      auto_rollback          = true
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = var.name })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }

  lifecycle {
    create_before_destroy = true
  }
}
