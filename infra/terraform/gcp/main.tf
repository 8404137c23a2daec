# gpufan on Google Cloud: Cloud Functions (2nd gen) front door, storage-triggered jobs and a
# scheduled control loop, plus a Cloud Run GPU worker for the `cloudrun` backend. Entry points and
# environment variables are the ones functions/README.md defines; tests/infra cross-checks them.

data "google_project" "this" {
  project_id = var.project_id
}

data "google_storage_project_service_account" "this" {
  project = var.project_id
}

locals {
  labels = merge({ "gpufan-module" = "gcp", "gpufan-name" = var.name }, var.labels)
  apis = toset([
    "artifactregistry.googleapis.com", "cloudbuild.googleapis.com", "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com", "eventarc.googleapis.com", "pubsub.googleapis.com",
    "run.googleapis.com", "secretmanager.googleapis.com", "storage.googleapis.com",
  ])

  # functions/gcp/main.py's entry points (functions/README.md). pubsub_job is the alternative to
  # storage_job for a Pub/Sub notification channel and is not deployed here.
  functions = {
    http    = { entry_point = "http_front_door", ingress = "ALLOW_ALL", timeout = var.functions.http_timeout_s, storage_trigger = false }
    storage = { entry_point = "storage_job", ingress = "ALLOW_INTERNAL_ONLY", timeout = var.functions.job_timeout_s, storage_trigger = true }
    control = { entry_point = "control_loop", ingress = "ALLOW_INTERNAL_ONLY", timeout = var.functions.job_timeout_s, storage_trigger = false }
  }
  storage_event = "google.cloud.storage.object.v1.finalized"
  server_token  = nonsensitive(var.server_token != null)

  buckets = {
    jobs   = "jobs/ in, results/ out"
    source = "function source bundles"
    models = "the model repository workers read (gpufan worker --model-repo gs://)"
  }

  worker_port = 8080 # gpu_containers/Dockerfile EXPOSE and CMD --port
  # The image's CMD with the repository in the models bucket instead of baked in: the worker
  # mirrors it at start and polls it for new versions (gpu_containers/sources.py).
  models_url = "gs://${google_storage_bucket.this["models"].name}/${var.models_prefix}"
  worker_args = [
    "--model-repo", local.models_url, "--host", "0.0.0.0", "--port", tostring(local.worker_port),
    "--repository-poll-secs", tostring(var.repository_poll_secs),
  ]
  worker_health_path = "/v2/health/ready"
  worker_live_path   = "/v2/health/live"
  worker_bearer      = var.worker.auth == "bearer"
  worker_repository  = coalesce(var.worker_image_repository, "${var.region}-docker.pkg.dev/${var.project_id}/${var.name}/worker")
  ingress = {
    "all"                               = "INGRESS_TRAFFIC_ALL"
    "internal-and-cloud-load-balancing" = "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"
  }
  # Accelerator names in core/data/accelerators.csv and SKUs in core/pricing/data/gpu_prices.csv.
  accelerators = { "nvidia-l4" = "L4", "nvidia-rtx-pro-6000" = "RTX PRO 6000" }
  skus = {
    "nvidia-l4/true"  = "run-l4"       # gpu_zonal_redundancy_disabled
    "nvidia-l4/false" = "run-l4-zonal" # zonal redundancy on
  }

  gpufan_targets = [{
    name            = "${var.name}-cloudrun-${replace(var.worker.accelerator, "nvidia-", "")}"
    backend         = "cloudrun"
    cloud           = "gcp"
    region          = var.region
    accelerator     = local.accelerators[var.worker.accelerator]
    pricing         = "serverless"
    sku             = lookup(local.skus, "${var.worker.accelerator}/${var.worker.gpu_zonal_redundancy_disabled}", null)
    usd_per_hour    = var.worker.usd_per_hour
    endpoint        = google_cloud_run_v2_service.this.uri
    max_concurrency = min(4096, var.worker.concurrency * var.worker.max_instances)
    timeout_s       = var.worker.timeout_s
    cold_start_s    = var.worker.cold_start_s
    scale_to_zero   = var.worker.min_instances == 0
    token_env       = local.worker_bearer ? var.worker_token_env : null
    options = {
      project = var.project_id
      service = google_cloud_run_v2_service.this.name
      auth    = var.worker.auth
    }
  }]
}

resource "google_project_service" "this" {
  for_each           = var.enable_apis ? local.apis : toset([])
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# ----------------------------------------------------------------------------- service accounts

resource "google_service_account" "front_door" {
  project      = var.project_id
  account_id   = "${var.name}-front-door"
  display_name = "gpufan front door and job functions"
}

resource "google_service_account" "worker" {
  project      = var.project_id
  account_id   = "${var.name}-worker"
  display_name = "gpufan Cloud Run GPU worker"
}

resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "${var.name}-scheduler"
  display_name = "gpufan control-loop scheduler (OIDC caller)"
}

# Eventarc delivers the storage events as the front door's account, which must be an event
# receiver; Cloud Storage's own agent publishes them to Pub/Sub. Both are project-level roles by
# Google's design (cloud.google.com/functions/docs/calling/storage).
resource "google_project_iam_member" "event_receiver" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.front_door.member
}

resource "google_project_iam_member" "storage_agent_publisher" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.this.email_address}"
}

# -------------------------------------------------------------------------------------- secrets

resource "google_secret_manager_secret" "worker_token" {
  project   = var.project_id
  secret_id = "${var.name}-worker-token"
  labels    = local.labels
  replication {
    auto {}
  }
  depends_on = [google_project_service.this]
}

resource "google_secret_manager_secret_version" "worker_token" {
  secret      = google_secret_manager_secret.worker_token.id
  secret_data = var.worker_token
}

resource "google_secret_manager_secret" "server_token" {
  count     = local.server_token ? 1 : 0
  project   = var.project_id
  secret_id = "${var.name}-server-token"
  labels    = local.labels
  replication {
    auto {}
  }
  depends_on = [google_project_service.this]
}

resource "google_secret_manager_secret_version" "server_token" {
  count       = local.server_token ? 1 : 0
  secret      = google_secret_manager_secret.server_token[0].id
  secret_data = var.server_token
}

resource "google_secret_manager_secret_iam_member" "front_door_worker_token" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.worker_token.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.front_door.member
}

resource "google_secret_manager_secret_iam_member" "front_door_server_token" {
  count     = local.server_token ? 1 : 0
  project   = var.project_id
  secret_id = google_secret_manager_secret.server_token[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.front_door.member
}

resource "google_secret_manager_secret_iam_member" "worker_token" {
  count     = local.worker_bearer ? 1 : 0
  project   = var.project_id
  secret_id = google_secret_manager_secret.worker_token.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.worker.member
}

# -------------------------------------------------------------------------------------- buckets

resource "google_storage_bucket" "this" {
  #checkov:skip=CKV_GCP_62:access logs need a log bucket; use Cloud Audit Logs data access logs instead
  for_each                    = local.buckets
  project                     = var.project_id
  name                        = "${var.name}-${each.key}-${data.google_project.this.number}"
  location                    = upper(var.region) # same region as the storage trigger
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = merge(local.labels, { "gpufan-purpose" = each.key })

  versioning {
    enabled = true # results are keyed by the input's generation (functions/README.md)
  }
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.this]
}

# The worker lists and reads the model repository, nothing more (objectViewer: get and list).
resource "google_storage_bucket_iam_member" "worker_models" {
  bucket = google_storage_bucket.this["models"].name
  role   = "roles/storage.objectViewer"
  member = google_service_account.worker.member
}

resource "google_storage_bucket_iam_member" "front_door_jobs" {
  bucket = google_storage_bucket.this["jobs"].name
  role   = "roles/storage.objectUser"
  member = google_service_account.front_door.member
}

resource "google_storage_bucket_object" "source" {
  # The name carries the bundle's hash, so a new `gpufan package` redeploys and an unchanged one
  # does not.
  name   = "gcf-source-${filesha256(var.source_zip)}.zip"
  bucket = google_storage_bucket.this["source"].name
  source = var.source_zip
}

# ------------------------------------------------------------------------------------ functions

resource "google_cloudfunctions2_function" "this" {
  #checkov:skip=CKV_GCP_124:the HTTP front door must be reachable by clients (IAM-authenticated unless front_door_public); the job and control functions are ALLOW_INTERNAL_ONLY
  for_each    = local.functions
  project     = var.project_id
  location    = var.region
  name        = "${var.name}-${each.key}"
  description = "gpufan ${each.key} entry point (${each.value.entry_point})"
  labels      = local.labels

  build_config {
    runtime     = var.functions.runtime
    entry_point = each.value.entry_point
    source {
      storage_source {
        bucket = google_storage_bucket.this["source"].name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.front_door.email
    available_memory                 = var.functions.memory
    available_cpu                    = var.functions.cpu
    timeout_seconds                  = each.value.timeout
    min_instance_count               = each.key == "http" ? var.functions.min_instances : 0
    max_instance_count               = var.functions.max_instances
    ingress_settings                 = each.value.ingress
    all_traffic_on_latest_revision   = true
    max_instance_request_concurrency = 1
    environment_variables = {
      GPUFAN_CONFIG = "/workspace/${var.config_file}"
    }
    secret_environment_variables {
      key        = var.worker_token_env
      project_id = var.project_id
      secret     = google_secret_manager_secret.worker_token.secret_id
      version    = "latest"
    }
    dynamic "secret_environment_variables" {
      for_each = google_secret_manager_secret.server_token
      content {
        key        = var.server_token_env
        project_id = var.project_id
        secret     = secret_environment_variables.value.secret_id
        version    = "latest"
      }
    }
  }

  dynamic "event_trigger" {
    for_each = each.value.storage_trigger ? [google_storage_bucket.this["jobs"].name] : []
    content {
      trigger_region        = var.region
      event_type            = local.storage_event
      retry_policy          = "RETRY_POLICY_RETRY" # a failed job raises; Eventarc redelivers
      service_account_email = google_service_account.front_door.email
      event_filters {
        attribute = "bucket"
        value     = event_trigger.value
      }
    }
  }

  depends_on = [
    google_project_service.this,
    google_project_iam_member.event_receiver,
    google_project_iam_member.storage_agent_publisher,
    google_secret_manager_secret_iam_member.front_door_worker_token,
    google_secret_manager_secret_iam_member.front_door_server_token,
  ]
}

# Who may call which function (a 2nd gen function is a Cloud Run service of the same name).
resource "google_cloud_run_service_iam_member" "storage_trigger" {
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.this["storage"].name
  role     = "roles/run.invoker"
  member   = google_service_account.front_door.member
}

resource "google_cloud_run_service_iam_member" "scheduler" {
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.this["control"].name
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

resource "google_cloud_run_service_iam_member" "public_front_door" {
  #checkov:skip=CKV_GCP_102:only with functions.front_door_public, which a precondition ties to a bearer token (server_token)
  count    = var.functions.front_door_public ? 1 : 0
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.this["http"].name
  role     = "roles/run.invoker"
  member   = "allUsers"

  lifecycle {
    precondition {
      condition     = local.server_token
      error_message = "functions.front_door_public needs server_token: an open front door must check a bearer token."
    }
  }
}

resource "google_cloud_scheduler_job" "control" {
  project          = var.project_id
  region           = var.region
  name             = "${var.name}-control-loop"
  description      = "gpufan control loop (functions/gcp/main.py control_loop)"
  schedule         = var.control_schedule
  time_zone        = var.time_zone
  attempt_deadline = "${min(var.functions.job_timeout_s, 1800)}s"

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.this["control"].service_config[0].uri
    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.this["control"].service_config[0].uri
    }
  }
  depends_on = [google_cloud_run_service_iam_member.scheduler]
}

# ----------------------------------------------------------------------------- GPU worker image

resource "google_artifact_registry_repository" "this" {
  #checkov:skip=CKV_GCP_84:images hold no secrets; Google-managed encryption, no CMEK key ring to manage
  project       = var.project_id
  location      = var.region
  repository_id = var.name
  description   = "gpufan worker images"
  format        = "DOCKER"
  labels        = local.labels
  docker_config {
    immutable_tags = true
  }
  depends_on = [google_project_service.this]
}

resource "google_cloud_run_v2_service" "this" {
  project              = var.project_id
  location             = var.region
  name                 = "${var.name}-worker"
  description          = "gpufan GPU worker: ONNX Runtime behind the Open Inference Protocol"
  ingress              = local.ingress[var.worker.ingress]
  invoker_iam_disabled = local.worker_bearer
  deletion_protection  = var.deletion_protection
  labels               = local.labels

  template {
    service_account                  = google_service_account.worker.email
    max_instance_request_concurrency = var.worker.concurrency
    timeout                          = "${var.worker.timeout_s}s"
    gpu_zonal_redundancy_disabled    = var.worker.gpu_zonal_redundancy_disabled
    scaling {
      min_instance_count = var.worker.min_instances
      max_instance_count = var.worker.max_instances
    }
    node_selector {
      accelerator = var.worker.accelerator
    }

    containers {
      name  = "worker"
      image = "${local.worker_repository}:${var.worker_image_tag}"
      args  = local.worker_args
      ports {
        container_port = local.worker_port
      }
      resources {
        limits = {
          cpu              = tostring(var.worker.cpu)
          memory           = "${var.worker.memory_gib}Gi"
          "nvidia.com/gpu" = "1"
        }
        cpu_idle          = false # instance-based billing: required with a GPU
        startup_cpu_boost = true
      }
      dynamic "env" {
        for_each = local.worker_bearer ? [google_secret_manager_secret.worker_token.secret_id] : []
        content {
          name = var.worker_token_env
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }
      startup_probe {
        http_get {
          path = local.worker_health_path
          port = local.worker_port
        }
        period_seconds    = 5
        timeout_seconds   = 3
        failure_threshold = 60 # model loading on a cold GPU instance: up to five minutes
      }
      liveness_probe {
        http_get {
          path = local.worker_live_path
          port = local.worker_port
        }
        period_seconds  = 15
        timeout_seconds = 3
      }
    }
  }

  # The autoscaler (core/backends/cloudrun.py set_scaling) owns the service-level scaling.
  lifecycle {
    ignore_changes = [scaling]
  }
  depends_on = [google_project_service.this, google_secret_manager_secret_iam_member.worker_token]
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  count    = local.worker_bearer ? 0 : 1
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.this.name
  role     = "roles/run.invoker"
  member   = google_service_account.front_door.member
}

# Describe (uri, readiness) and scale (the autoscaler) this one service; updating a service acts
# as its service account.
resource "google_cloud_run_v2_service_iam_member" "front_door_developer" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.this.name
  role     = "roles/run.developer"
  member   = google_service_account.front_door.member
}

resource "google_service_account_iam_member" "front_door_acts_as_worker" {
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.front_door.member
}
