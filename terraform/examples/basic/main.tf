# Two hybrid-gateway instances in two private subnets of an existing EKS cluster's VPC.
#
#   terraform init && terraform apply -var-file=example.tfvars
#
# Then apply the RBAC the access entry's group needs (once per cluster):
#   kubectl apply -f packaging/kubernetes/rbac.yaml

terraform {
  required_version = ">= 1.9.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40.0, < 7.0.0"
    }
  }
}

provider "aws" {
  region = var.region
}

module "hybrid_gateway" {
  source = "../../modules/hybrid-gateway"

  name          = "hybrid-gateway"
  cluster_name  = var.cluster_name
  vpc_id        = var.vpc_id
  subnet_ids    = var.subnet_ids
  gateway_count = 2
  os            = "al2023"
  architecture  = "x86_64"
  # The version the gateways run: bump both to upgrade (an instance refresh follows).
  package_url    = var.package_url
  package_sha256 = var.package_sha256

  vpc_cidrs         = var.vpc_cidrs
  hybrid_pod_cidrs  = var.hybrid_pod_cidrs
  remote_node_cidrs = var.remote_node_cidrs

  # Tables are also found by the tag hybrid-gateway.io/managed=<cluster_name> (the default).
  route_table_ids = var.route_table_ids

  enable_dynamodb_lock = true
  create_lock_table    = true

  tags = { environment = "example" }
}

variable "region" {
  description = "AWS region of the cluster."
  type        = string
  default     = "us-west-2"
}

variable "cluster_name" {
  description = "Existing EKS cluster (authentication mode API or API_AND_CONFIG_MAP)."
  type        = string
}

variable "vpc_id" {
  description = "The cluster's VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Two private subnets in different AZs."
  type        = list(string)
}

variable "package_url" {
  description = "HTTPS URL of the hybrid-gateway .rpm (AL2023)."
  type        = string
}

variable "package_sha256" {
  description = "SHA-256 of that package (sha256sum)."
  type        = string
}

variable "vpc_cidrs" {
  description = "Every CIDR of the VPC."
  type        = list(string)
}

variable "hybrid_pod_cidrs" {
  description = "Hybrid nodes' pod CIDRs."
  type        = list(string)
}

variable "remote_node_cidrs" {
  description = "On-premises CIDRs of the hybrid nodes."
  type        = list(string)
}

variable "route_table_ids" {
  description = "Route tables of the subnets that must reach hybrid pods."
  type        = list(string)
  default     = []
}

output "autoscaling_group_name" {
  description = "Gateways' Auto Scaling group."
  value       = module.hybrid_gateway.autoscaling_group_name
}

output "iam_role_arn" {
  description = "Gateway instance role."
  value       = module.hybrid_gateway.iam_role_arn
}

output "config_toml" {
  description = "Config written on each gateway."
  value       = module.hybrid_gateway.config_toml
}
