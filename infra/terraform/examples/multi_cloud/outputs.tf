output "gpufan_targets" {
  description = "Every enabled module's targets, shaped like core.config.Target: input of `gpufan targets --from-terraform`."
  value = try(concat(
    flatten([for m in module.aws : m.gpufan_targets]),
    flatten([for m in module.gcp : m.gpufan_targets]),
    flatten([for m in module.azure : m.gpufan_targets]),
  ), [])
}

output "front_doors" {
  description = "Front door URL per enabled cloud."
  value = try(merge(
    { for m in module.aws : "aws" => m.api_endpoint },
    { for m in module.gcp : "gcp" => m.front_door_url },
    { for m in module.azure : "azure" => m.front_door_url },
  ), {})
}

output "job_buckets" {
  description = "Where to upload event jobs (jobs/) per enabled cloud."
  value = try(merge(
    { for m in module.aws : "aws" => m.inputs_bucket },
    { for m in module.gcp : "gcp" => m.jobs_bucket },
    { for m in module.azure : "azure" => "${m.storage_account_name}/${m.jobs_container}" },
  ), {})
}
