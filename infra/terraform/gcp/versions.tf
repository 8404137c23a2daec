terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # gpu_zonal_redundancy_disabled on google_cloud_run_v2_service arrived in the 6.x series.
      version = ">= 6.30, < 8.0"
    }
  }
}
