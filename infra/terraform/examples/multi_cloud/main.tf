# gpufan on three clouds at once: each module is optional, and their targets are merged into one
# `gpufan_targets` output for `gpufan targets --from-terraform`.
#
#   gpufan package --out dist
#   terraform -chdir=infra/terraform/examples/multi_cloud apply
#   terraform -chdir=infra/terraform/examples/multi_cloud output -json > tf-outputs.json
#   gpufan targets --from-terraform tf-outputs.json --out targets.yaml

module "aws" {
  source = "../../aws"
  count  = var.enable_aws ? 1 : 0

  lambda_zip       = "${var.dist}/lambda.zip"
  worker_token     = var.worker_token
  worker_image_tag = var.worker_image_tag
  batch = {
    vpc_id     = var.aws_batch_network.vpc_id
    subnet_ids = var.aws_batch_network.subnet_ids
  }
}

module "gcp" {
  source = "../../gcp"
  count  = var.enable_gcp ? 1 : 0

  project_id       = var.gcp_project_id
  region           = var.gcp_region
  source_zip       = "${var.dist}/gcf-source.zip"
  worker_token     = var.worker_token
  worker_image_tag = var.worker_image_tag
}

module "azure" {
  source = "../../azure"
  count  = var.enable_azure ? 1 : 0

  resource_group_name = var.azure_resource_group
  package_zip         = "${var.dist}/azure-functionapp.zip"
  worker_token        = var.worker_token
  worker_image = {
    repository      = var.azure_worker_image.repository
    tag             = var.worker_image_tag
    registry_server = var.azure_worker_image.registry_server
    acr_id          = var.azure_worker_image.acr_id
  }
  aca = {
    usd_per_hour = var.azure_aca_usd_per_hour
  }
}
