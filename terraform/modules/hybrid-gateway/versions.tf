terraform {
  # optional() object attributes with defaults, templatefile(), validation referencing only
  # the variable itself.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # aws_eks_access_entry appeared in 5.33; 5.x and 6.x both work.
      version = ">= 5.33.0, < 7.0.0"
    }
  }
}
