output "autoscaling_group_name" {
  description = "Name of the gateways' Auto Scaling group (target of instance refreshes and the SSM upgrade document)."
  value       = aws_autoscaling_group.this.name
}

output "launch_template_id" {
  description = "Launch template of the gateways."
  value       = aws_launch_template.this.id
}

output "security_group_id" {
  description = "Security group of the gateway ENIs."
  value       = aws_security_group.this.id
}

output "iam_role_arn" {
  description = "Instance role of the gateways (mapped to Kubernetes group kubernetes_group)."
  value       = aws_iam_role.this.arn
}

output "instance_profile_name" {
  description = "Instance profile of the gateways."
  value       = aws_iam_instance_profile.this.name
}

output "lock_table_name" {
  description = "DynamoDB lock table, or null when the DynamoDB lock is off."
  value       = var.enable_dynamodb_lock ? local.lock_table_name : null
}

output "kubernetes_group" {
  description = "Kubernetes group the access entry binds; apply packaging/kubernetes/rbac.yaml (it binds this group)."
  value       = one(aws_eks_access_entry.gateway.kubernetes_groups)
}

output "config_toml" {
  description = "The /etc/hybrid-gateway/config.toml the user data writes."
  value       = local.config_toml
}

output "lock_key" {
  description = "Key of the DynamoDB lock item, or null when the DynamoDB lock is off."
  value       = var.enable_dynamodb_lock ? local.lock_key : null
}

output "route_table_tag" {
  description = "The \"key=value\" tag of the route tables the gateways manage (null: route_table_ids only). Tag the tables of the cluster's VPC with it."
  value       = local.route_table_tag
}

output "launch_lifecycle_hook_name" {
  description = "Launch lifecycle hook completed by each instance once `hybrid-gateway status` reports ready."
  value       = local.launch_hook_name
}
