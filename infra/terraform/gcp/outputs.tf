output "gpufan_targets" {
  description = "gpufan targets shaped like core.config.Target (the Cloud Run GPU worker): `gpufan targets --from-terraform` turns them into gpufan.yaml."
  value       = try(local.gpufan_targets, [])
}

output "front_door_url" {
  description = "URL of the HTTP front door function: OIP routes are under /v2/."
  value       = try(google_cloudfunctions2_function.this["http"].service_config[0].uri, null)
}

output "function_names" {
  description = "Cloud Functions names by entry point (http, storage, control)."
  value       = try({ for k, f in google_cloudfunctions2_function.this : k => f.name }, {})
}

output "jobs_bucket" {
  description = "Bucket for event jobs: upload to jobs/, read results/ (functions/README.md)."
  value       = try(google_storage_bucket.this["jobs"].name, null)
}

output "worker_url" {
  description = "URL of the Cloud Run GPU worker."
  value       = try(google_cloud_run_v2_service.this.uri, null)
}

output "worker_service" {
  description = "Cloud Run service name of the worker (the cloudrun target's options.service)."
  value       = try(google_cloud_run_v2_service.this.name, null)
}

output "artifact_registry_repository" {
  description = "Push the worker image here, tagged worker_image_tag."
  value       = try("${google_artifact_registry_repository.this.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.this.repository_id}", null)
}

output "front_door_service_account" {
  description = "Service account of the functions: the only invoker of the worker when worker.auth is id_token."
  value       = try(google_service_account.front_door.email, null)
}

output "worker_token_secret" {
  description = "Secret Manager secret holding the workers' bearer token."
  value       = try(google_secret_manager_secret.worker_token.id, null)
}

output "models_url" {
  description = "The model repository the workers read: upload {model}/{version}/model.onnx (and config.pbtxt) under it."
  value       = try(local.models_url, null)
}
