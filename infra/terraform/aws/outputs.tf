output "gpufan_targets" {
  description = "gpufan targets shaped like core.config.Target, one per Batch job queue: `gpufan targets --from-terraform` turns them into gpufan.yaml."
  value       = try(local.gpufan_targets, [])
}

output "api_endpoint" {
  description = "Front door URL (HTTP API, $default stage): OIP routes are under /v2/."
  value       = try(aws_apigatewayv2_api.this.api_endpoint, null)
}

output "function_names" {
  description = "Lambda function names by entry point (http, sqs, schedule)."
  value       = try({ for k, f in aws_lambda_function.this : k => f.function_name }, {})
}

output "inputs_bucket" {
  description = "Bucket for event jobs: upload to jobs/, read results/ (functions/README.md)."
  value       = try(aws_s3_bucket.this["inputs"].id, null)
}

output "staging_bucket" {
  description = "Bucket where the batch backend stages shards (the targets' options.bucket)."
  value       = try(aws_s3_bucket.this["staging"].id, null)
}

output "models_url" {
  description = "The model repository the workers read: upload {model}/{version}/model.onnx (and config.pbtxt) under it."
  value       = try(local.models_url, null)
}

output "jobs_queue_url" {
  description = "SQS queue fed by S3 ObjectCreated events for jobs/."
  value       = try(aws_sqs_queue.jobs.url, null)
}

output "dead_letter_queue_url" {
  description = "Where job events that keep failing land (the jobs queue's redrive target)."
  value       = try(aws_sqs_queue.dlq.url, null)
}

output "ecr_repository_url" {
  description = "Push the worker image here, tagged worker_image_tag."
  value       = try(aws_ecr_repository.this.repository_url, null)
}

output "job_queues" {
  description = "AWS Batch job queue names by kind (spot, on_demand)."
  value       = try({ for k, q in aws_batch_job_queue.this : k => q.name }, {})
}

output "job_definition_arn" {
  description = "AWS Batch job definition of the worker."
  value       = try(aws_batch_job_definition.this.arn, null)
}

output "worker_token_secret_arn" {
  description = "Secrets Manager secret holding the workers' bearer token."
  value       = try(aws_secretsmanager_secret.worker_token.arn, null)
}

output "kms_key_arn" {
  description = "The module's customer-managed key (buckets, queues, logs, secret, ECR)."
  value       = try(aws_kms_key.this.arn, null)
}
