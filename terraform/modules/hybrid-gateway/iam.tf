# Instance role of the gateways. The daemon's permissions mirror packaging/iam-policy.json
# (the source of truth for the action list; terraform/tests/test_terraform.py checks that
# every statement here carries exactly the actions of the statement with the same Sid).

data "aws_iam_policy_document" "assume_role" {
  statement {
    sid     = "Ec2AssumeRole"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  name_prefix        = "${var.name}-"
  description        = "hybrid-gateway instances: VPC routes for hybrid pod CIDRs, ENI source/dest check, DynamoDB leader lock"
  assume_role_policy = data.aws_iam_policy_document.assume_role.json
  tags               = local.tags
}

resource "aws_iam_instance_profile" "this" {
  name_prefix = "${var.name}-"
  role        = aws_iam_role.this.name
  tags        = local.tags
}

data "aws_iam_policy_document" "daemon" {
  # Reads: route tables, instances (its own ASG peers for takeover "owned"), ENIs, subnets
  # (per-AZ mode: each table's AZ). The EC2 Describe* actions support no resource-level
  # permissions.
  statement {
    sid = "DescribeRouteTablesInstancesAndEnis"
    actions = [
      "ec2:DescribeRouteTables",
      "ec2:DescribeInstances",
      "ec2:DescribeNetworkInterfaces",
      "ec2:DescribeSubnets",
    ]
    resources = ["*"]
  }

  # Route writes only in tables tagged as managed ...
  dynamic "statement" {
    for_each = local.route_table_tag == null ? [] : [1]
    content {
      sid = "WriteRoutesInTablesTaggedManaged"
      actions = [
        "ec2:CreateRoute",
        "ec2:ReplaceRoute",
        "ec2:DeleteRoute",
      ]
      resources = ["arn:${local.partition}:ec2:${local.region}:${local.account_id}:route-table/*"]
      condition {
        test     = "StringEquals"
        variable = "ec2:ResourceTag/${local.route_table_tag_key}"
        values   = [local.route_table_tag_value]
      }
      # Only tables of the cluster's VPC, whatever else carries the tag.
      condition {
        test     = "StringEquals"
        variable = "ec2:Vpc"
        values   = [local.vpc_arn]
      }
    }
  }

  # ... and in the tables listed by id.
  dynamic "statement" {
    for_each = length(var.route_table_ids) == 0 ? [] : [1]
    content {
      sid = "WriteRoutesInListedTables"
      actions = [
        "ec2:CreateRoute",
        "ec2:ReplaceRoute",
        "ec2:DeleteRoute",
      ]
      resources = [for id in var.route_table_ids : "arn:${local.partition}:ec2:${local.region}:${local.account_id}:route-table/${id}"]
      condition {
        test     = "StringEquals"
        variable = "ec2:Vpc"
        values   = [local.vpc_arn]
      }
    }
  }

  # Source/destination check off on the gateways' own ENIs only (tagged by the launch template).
  statement {
    sid       = "DisableSourceDestCheckOnGatewayEnis"
    actions   = ["ec2:ModifyNetworkInterfaceAttribute"]
    resources = ["arn:${local.partition}:ec2:${local.region}:${local.account_id}:network-interface/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/${local.gateway_eni_tag_key}"
      values   = ["true"]
    }
  }

  # The leader lock: one item of one table; in per-AZ mode also one item per AZ shard
  # ("<lock_key>-<az>"). StringLike so the per-AZ wildcard can be expressed; lock_key itself
  # may not contain * or ? (validated), so for it this is an exact match.
  dynamic "statement" {
    for_each = var.enable_dynamodb_lock ? [1] : []
    content {
      sid = "LeaderLockItemOnly"
      actions = [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
      ]
      resources = [var.create_lock_table ? aws_dynamodb_table.lock[0].arn : local.lock_table_arn]
      condition {
        test     = "ForAllValues:StringLike"
        variable = "dynamodb:LeadingKeys"
        values   = var.election_mode == "per-az" ? [local.lock_key, "${local.lock_key}-*"] : [local.lock_key]
      }
    }
  }
}

resource "aws_iam_role_policy" "daemon" {
  name   = "hybrid-gateway-daemon"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.daemon.json

  lifecycle {
    precondition {
      condition     = local.route_table_tag != null || length(var.route_table_ids) > 0
      error_message = "Set route_table_ids and/or route_table_tag: without a managed route table the VPC cannot reach the hybrid pods."
    }
  }
}

# Bootstrap only: fetch the package object from S3 when package_s3_uri is used.
data "aws_iam_policy_document" "package" {
  count = var.package_s3_uri == null ? 0 : 1
  statement {
    sid       = "GetHybridGatewayPackage"
    actions   = ["s3:GetObject"]
    resources = ["arn:${local.partition}:s3:::${trimprefix(var.package_s3_uri, "s3://")}"]
  }
}

resource "aws_iam_role_policy" "package" {
  count  = var.package_s3_uri == null ? 0 : 1
  name   = "hybrid-gateway-package"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.package[0].json
}

# Bootstrap and health reporting (user data, not the daemon): complete this instance's
# launch lifecycle hook, and report the instance Unhealthy when the daemon is not. Scoped to
# this module's Auto Scaling groups (name_prefix) by ARN.
data "aws_iam_policy_document" "lifecycle" {
  statement {
    sid = "CompleteLaunchHookAndReportHealth"
    actions = [
      "autoscaling:CompleteLifecycleAction",
      "autoscaling:RecordLifecycleActionHeartbeat",
      "autoscaling:SetInstanceHealth",
    ]
    resources = ["arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${var.name}-*"]
  }
  # Which group this instance is in (no resource-level permissions for this read).
  statement {
    sid       = "FindOwnAutoScalingGroup"
    actions   = ["autoscaling:DescribeAutoScalingInstances"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "lifecycle" {
  name   = "hybrid-gateway-lifecycle"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.lifecycle.json
}

# Session Manager and SSM Run Command (the upgrade document) for operators.
resource "aws_iam_role_policy_attachment" "ssm" {
  count      = var.attach_ssm_managed_policy ? 1 : 0
  role       = aws_iam_role.this.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}
