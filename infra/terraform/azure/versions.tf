terraform {
  required_version = ">= 1.5"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # storage_account_id on containers and queues needs a recent 4.x; 5.x renames Key Vault's
      # enable_rbac_authorization.
      version = ">= 4.20, < 5.0"
    }
  }
}
