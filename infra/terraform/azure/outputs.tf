output "gpufan_targets" {
  description = "gpufan targets shaped like core.config.Target (Container Apps GPU worker, and the ACI CPU worker when enabled): `gpufan targets --from-terraform` turns them into gpufan.yaml."
  value       = try(local.gpufan_targets, [])
}

output "front_door_url" {
  description = "Function App URL: OIP routes are under /v2/ (host.json routePrefix is empty); send the function key as x-functions-key."
  value       = try("https://${azurerm_linux_function_app.this.default_hostname}", null)
}

output "function_app_name" {
  description = "Name of the Function App."
  value       = try(azurerm_linux_function_app.this.name, null)
}

output "storage_account_name" {
  description = "Storage account of the Function App and of event jobs."
  value       = try(azurerm_storage_account.this.name, null)
}

output "jobs_container" {
  description = "Blob container for event jobs: upload to jobs/, read results/ (functions/README.md)."
  value       = try(azurerm_storage_container.jobs.name, null)
}

output "jobs_queue" {
  description = "Storage queue fed by Event Grid BlobCreated events for jobs/."
  value       = try(azurerm_storage_queue.jobs.name, null)
}

output "container_app_name" {
  description = "The GPU worker's Container App (the aca target's options.app)."
  value       = try(azurerm_container_app.this.name, null)
}

output "container_app_fqdn" {
  description = "Ingress FQDN of the GPU worker."
  value       = try(azurerm_container_app.this.ingress[0].fqdn, null)
}

output "identity_client_id" {
  description = "Client id of the module's user-assigned identity (AZURE_CLIENT_ID in the Function App)."
  value       = try(azurerm_user_assigned_identity.this.client_id, null)
}

output "key_vault_id" {
  description = "Key Vault holding the worker token and the storage connection string."
  value       = try(azurerm_key_vault.this.id, null)
}

output "models_url" {
  description = "The model repository the workers read: upload {model}/{version}/model.onnx (and config.pbtxt) under it."
  value       = try(local.models_url, null)
}
