variable "enable_aws" {
  type        = bool
  description = "Deploy the AWS module (Lambda front door, AWS Batch GPU targets)."
  default     = true
}

variable "enable_gcp" {
  type        = bool
  description = "Deploy the Google Cloud module (Cloud Functions front door, Cloud Run L4 target)."
  default     = true
}

variable "enable_azure" {
  type        = bool
  description = "Deploy the Azure module (Function App front door, Container Apps GPU target)."
  default     = true
}

variable "dist" {
  type        = string
  description = "Folder where `gpufan package --out` wrote the bundles (relative to this folder or absolute)."
  default     = "../../../../dist"
}

variable "worker_token" {
  type        = string
  description = "Bearer token shared by every HTTP worker and every front door (`openssl rand -hex 32`)."
  sensitive   = true
}

variable "worker_image_tag" {
  type        = string
  description = "Tag of the worker image pushed to each cloud's registry (never 'latest')."

  validation {
    condition     = lower(var.worker_image_tag) != "latest"
    error_message = "Pin a worker image tag; 'latest' is refused."
  }
}

variable "aws_region" {
  type        = string
  description = "AWS region of the AWS module."
  default     = "us-east-1"
}

variable "aws_batch_network" {
  type = object({
    vpc_id     = string
    subnet_ids = list(string)
  })
  description = "VPC and subnets (with a route to S3 and ECR) for the AWS Batch GPU instances."
  default     = { vpc_id = "", subnet_ids = [] }
}

variable "gcp_project_id" {
  type        = string
  description = "Google Cloud project of the GCP module."
  default     = null
}

variable "gcp_region" {
  type        = string
  description = "Region of the GCP module (must offer Cloud Run L4 GPUs)."
  default     = "us-central1"
}

variable "azure_subscription_id" {
  type        = string
  description = "Azure subscription of the Azure module (or set ARM_SUBSCRIPTION_ID)."
  default     = null
}

variable "azure_resource_group" {
  type        = string
  description = "Existing resource group of the Azure module, in a region with serverless GPUs."
  default     = "gpufan"
}

variable "azure_worker_image" {
  type = object({
    repository      = string
    registry_server = optional(string)
    acr_id          = optional(string)
  })
  description = "Worker image repository for Container Apps (tagged worker_image_tag)."
  default     = { repository = "example.azurecr.io/gpufan-worker" }
}

variable "azure_aca_usd_per_hour" {
  type        = number
  description = "Price of one Container Apps serverless T4 replica-hour (no price book row exists)."
  default     = 0

  validation {
    condition     = var.azure_aca_usd_per_hour >= 0
    error_message = "azure_aca_usd_per_hour must be >= 0."
  }
}
