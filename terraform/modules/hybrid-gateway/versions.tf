terraform {
  # Variable validations that reference other variables (hybrid_pod_cidrs vs vpc_cidrs,
  # mirroring check-config) need 1.9.
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # aws_eks_access_entry appeared in 5.33, instance_refresh max_healthy_percentage in
      # 5.40; 5.x and 6.x both work.
      version = ">= 5.40.0, < 7.0.0"
    }
  }
}
