variable "project_id" {
  type        = string
  description = "Google Cloud project that holds everything this module creates."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lower-case letters, digits, hyphens)."
  }
}

variable "region" {
  type        = string
  description = "Region of the functions, the Cloud Run worker and the buckets. Cloud Run L4 GPUs are offered in a few regions only (e.g. us-central1, us-east4, europe-west1, europe-west4, asia-southeast1): check quota first."
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a region name such as us-central1."
  }
}

variable "name" {
  type        = string
  description = "Prefix of every resource name (functions, service, buckets, service accounts)."
  default     = "gpufan"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}$", var.name))
    error_message = "name must be 2-15 characters of lower-case letters, digits and '-' (service account ids are at most 30 characters)."
  }
}

variable "enable_apis" {
  type        = bool
  description = "Enable the Google APIs the module uses (never disabled on destroy)."
  default     = true
}

variable "source_zip" {
  type        = string
  description = "Path of dist/gcf-source.zip built by `gpufan package` (root main.py re-exports functions/gcp/main.py)."

  validation {
    condition     = endswith(var.source_zip, ".zip")
    error_message = "source_zip must be the path of a .zip file, e.g. dist/gcf-source.zip."
  }
}

variable "config_file" {
  type        = string
  description = "Path of gpufan.yaml inside the source bundle; GPUFAN_CONFIG is set to /workspace/<this>."
  default     = "gpufan.yaml"

  validation {
    condition     = !startswith(var.config_file, "/") && !strcontains(var.config_file, "..")
    error_message = "config_file is relative to the bundle root and may not contain '..'."
  }
}

variable "functions" {
  type = object({
    runtime           = optional(string, "python312")
    memory            = optional(string, "1Gi")
    cpu               = optional(string, "1")
    http_timeout_s    = optional(number, 60)
    job_timeout_s     = optional(number, 540)
    max_instances     = optional(number, 10)
    min_instances     = optional(number, 0)
    front_door_public = optional(bool, false)
  })
  description = "Cloud Functions (2nd gen) settings. front_door_public false: callers need roles/run.invoker and a Google ID token; true: anyone may call, and server_token (gpufan.yaml server.token_env) is required."
  default     = {}

  validation {
    condition     = contains(["python311", "python312", "python313"], var.functions.runtime)
    error_message = "functions.runtime must be python311, python312 or python313."
  }
  validation {
    condition     = var.functions.http_timeout_s >= 1 && var.functions.http_timeout_s <= 3600
    error_message = "functions.http_timeout_s must be 1-3600 (HTTP functions' limit)."
  }
  validation {
    condition     = var.functions.job_timeout_s >= 1 && var.functions.job_timeout_s <= 540
    error_message = "functions.job_timeout_s must be 1-540 (event-driven functions' limit)."
  }
  validation {
    condition     = var.functions.min_instances >= 0 && var.functions.max_instances >= 1 && var.functions.min_instances <= var.functions.max_instances
    error_message = "functions needs 0 <= min_instances <= max_instances and max_instances >= 1."
  }
}

variable "worker_token_env" {
  type        = string
  description = "Environment variable holding the workers' bearer token (the worker's --token-env, default GPUFAN_WORKER_TOKEN)."
  default     = "GPUFAN_WORKER_TOKEN"

  validation {
    condition     = can(regex("^[A-Z_][A-Z0-9_]*$", var.worker_token_env))
    error_message = "worker_token_env must be an upper-case environment variable name."
  }
}

variable "worker_token" {
  type        = string
  description = "Bearer token of HTTP workers; kept in Secret Manager and mounted as worker_token_env in the functions (and in the Cloud Run worker when worker.auth is bearer)."
  sensitive   = true

  validation {
    condition     = length(var.worker_token) >= 32
    error_message = "worker_token must be at least 32 characters (e.g. `openssl rand -hex 32`)."
  }
}

variable "server_token_env" {
  type        = string
  description = "Environment variable that gpufan.yaml's server.token_env names (the front door's bearer token)."
  default     = "GPUFAN_TOKEN"

  validation {
    condition     = can(regex("^[A-Z_][A-Z0-9_]*$", var.server_token_env))
    error_message = "server_token_env must be an upper-case environment variable name."
  }
}

variable "server_token" {
  type        = string
  description = "Bearer token clients send to a public front door (functions.front_door_public). Null: not set; keep server.token_env unset in gpufan.yaml, since Google's ID token then owns the Authorization header."
  default     = null
  sensitive   = true
}

variable "worker_image_repository" {
  type        = string
  description = "Worker image repository without tag. Null: REGION-docker.pkg.dev/PROJECT/NAME/worker in this module's Artifact Registry."
  default     = null

  validation {
    condition     = var.worker_image_repository == null || !strcontains(coalesce(var.worker_image_repository, "x"), ":")
    error_message = "worker_image_repository takes no tag: set worker_image_tag."
  }
}

variable "worker_image_tag" {
  type        = string
  description = "Tag of the worker image (the repository has immutable tags: push a new tag per build)."

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.worker_image_tag)) && lower(var.worker_image_tag) != "latest"
    error_message = "worker_image_tag must be a valid image tag other than 'latest' (pin a version, e.g. 0.1.0)."
  }
}

variable "worker" {
  type = object({
    accelerator                   = optional(string, "nvidia-l4")
    cpu                           = optional(number, 4)
    memory_gib                    = optional(number, 16)
    min_instances                 = optional(number, 0)
    max_instances                 = optional(number, 3)
    concurrency                   = optional(number, 4)
    ingress                       = optional(string, "all")
    gpu_zonal_redundancy_disabled = optional(bool, true)
    auth                          = optional(string, "id_token")
    timeout_s                     = optional(number, 300)
    cold_start_s                  = optional(number, 30)
    usd_per_hour                  = optional(number)
  })
  description = "The Cloud Run GPU worker (the `cloudrun` target). auth id_token: only the front door's service account may invoke it (roles/run.invoker); bearer: IAM is off and the worker checks worker_token. ingress internal-and-cloud-load-balancing needs the callers' traffic to come from the VPC."
  default     = {}

  validation {
    condition     = contains(["nvidia-l4", "nvidia-rtx-pro-6000"], var.worker.accelerator)
    error_message = "worker.accelerator must be nvidia-l4 or nvidia-rtx-pro-6000."
  }
  validation {
    # Cloud Run's GPU minimums (cloud.google.com/run/docs/configuring/services/gpu): L4 needs 4 CPU
    # and 16 GiB, RTX PRO 6000 20 CPU and 80 GiB.
    condition     = var.worker.cpu >= 4 && var.worker.memory_gib >= 16 && (var.worker.accelerator != "nvidia-rtx-pro-6000" || (var.worker.cpu >= 20 && var.worker.memory_gib >= 80))
    error_message = "A Cloud Run GPU needs at least 4 CPU and 16 GiB (nvidia-l4), or 20 CPU and 80 GiB (nvidia-rtx-pro-6000)."
  }
  validation {
    condition     = var.worker.min_instances >= 0 && var.worker.max_instances >= 1 && var.worker.min_instances <= var.worker.max_instances
    error_message = "worker needs 0 <= min_instances <= max_instances and max_instances >= 1."
  }
  validation {
    condition     = var.worker.concurrency >= 1 && var.worker.concurrency <= 1000
    error_message = "worker.concurrency must be 1-1000."
  }
  validation {
    condition     = contains(["all", "internal-and-cloud-load-balancing"], var.worker.ingress)
    error_message = "worker.ingress must be all or internal-and-cloud-load-balancing."
  }
  validation {
    condition     = contains(["id_token", "bearer"], var.worker.auth)
    error_message = "worker.auth must be id_token or bearer (core/backends/cloudrun.py)."
  }
  validation {
    condition     = var.worker.timeout_s >= 1 && var.worker.timeout_s <= 3600
    error_message = "worker.timeout_s must be 1-3600 seconds."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the Cloud Run worker from `terraform destroy`."
  default     = true
}

variable "control_schedule" {
  type        = string
  description = "Cloud Scheduler cron (5 fields) that calls the control_loop function with an OIDC token."
  default     = "* * * * *"

  validation {
    condition     = length(split(" ", trimspace(var.control_schedule))) == 5
    error_message = "control_schedule must be a 5-field unix-cron expression, e.g. '* * * * *'."
  }
}

variable "time_zone" {
  type        = string
  description = "Time zone of control_schedule."
  default     = "Etc/UTC"
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every resource that takes them."
  default     = {}
}

variable "models_prefix" {
  description = "Where in the models bucket the model repository lives ({model}/{version}/model.onnx under it); workers read it with --model-repo gs://BUCKET/PREFIX"
  type        = string
  default     = "models"
  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.models_prefix))
    error_message = "models_prefix is a key prefix without leading or trailing slashes, e.g. models or prod/models."
  }
}

variable "repository_poll_secs" {
  description = "How often a worker looks for a new state of the model repository and serves it once it loads whole (gpufan worker --repository-poll-secs; 0: load once at start)"
  type        = number
  default     = 60
  validation {
    condition     = var.repository_poll_secs >= 0
    error_message = "repository_poll_secs is 0 (off) or a positive number of seconds."
  }
}
