terraform {
  # optional() defaults inside object() types need Terraform 1.3; 1.5 for check blocks elsewhere.
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.x renames aws_batch_compute_environment.compute_environment_name to `name` (and
      # data.aws_region.name to `region`): this module is written against the 5.x schema.
      version = ">= 5.80, < 6.0"
    }
  }
}
