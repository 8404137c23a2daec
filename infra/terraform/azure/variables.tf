variable "resource_group_name" {
  type        = string
  description = "Existing resource group for everything this module creates; its location is used."

  validation {
    condition     = can(regex("^[-\\w.()]{1,89}[-\\w()]$", var.resource_group_name))
    error_message = "resource_group_name must be a valid resource group name."
  }
}

variable "location" {
  type        = string
  description = "Azure region. Null: the resource group's. Serverless GPUs are offered in a few regions only (e.g. westus3, australiaeast, swedencentral)."
  default     = null
}

variable "name" {
  type        = string
  description = "Prefix of resource names. Storage accounts and Key Vaults need globally unique names: a suffix of the subscription and group hash is added."
  default     = "gpufan"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,9}$", var.name))
    error_message = "name must be 2-10 lower-case letters and digits, starting with a letter (storage account names allow nothing else)."
  }
}

variable "package_zip" {
  type        = string
  description = "Path of dist/azure-functionapp.zip built by `gpufan package` (function_app.py and host.json at the root)."

  validation {
    condition     = endswith(var.package_zip, ".zip")
    error_message = "package_zip must be the path of a .zip file, e.g. dist/azure-functionapp.zip."
  }
}

variable "config_file" {
  type        = string
  description = "Path of gpufan.yaml inside the package; GPUFAN_CONFIG is set to /home/site/wwwroot/<this>."
  default     = "gpufan.yaml"

  validation {
    condition     = !startswith(var.config_file, "/") && !strcontains(var.config_file, "..")
    error_message = "config_file is relative to the package root and may not contain '..'."
  }
}

variable "function_app" {
  type = object({
    sku_name         = optional(string, "EP1")
    python_version   = optional(string, "3.12")
    jobs_container   = optional(string, "gpufan-jobs")
    jobs_queue       = optional(string, "gpufan-jobs")
    control_schedule = optional(string, "0 */1 * * * *")
  })
  description = "The Function App. control_schedule is the NCRONTAB (6 fields, seconds first) of the control-loop timer, read through the GPUFAN_CONTROL_SCHEDULE app setting."
  default     = {}

  validation {
    condition     = contains(["Y1", "EP1", "EP2", "EP3", "B1", "B2", "B3", "S1", "S2", "S3", "P1v3", "P2v3", "P3v3"], var.function_app.sku_name)
    error_message = "function_app.sku_name must be a Linux plan SKU such as Y1 (Consumption), EP1 (Premium) or P1v3."
  }
  validation {
    condition     = contains(["3.11", "3.12"], var.function_app.python_version)
    error_message = "function_app.python_version must be 3.11 or 3.12 (gpufan needs Python >= 3.11)."
  }
  validation {
    condition     = can(regex("^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$", var.function_app.jobs_container)) && can(regex("^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$", var.function_app.jobs_queue))
    error_message = "jobs_container and jobs_queue must be 3-63 lower-case letters, digits and single hyphens."
  }
  validation {
    condition     = length(split(" ", trimspace(var.function_app.control_schedule))) == 6
    error_message = "function_app.control_schedule must be a 6-field NCRONTAB expression, e.g. '0 */1 * * * *'."
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
  description = "Bearer token of the workers; stored in Key Vault, given to the Container App as a secret and to the Function App as a Key Vault reference."
  sensitive   = true

  validation {
    condition     = length(var.worker_token) >= 32
    error_message = "worker_token must be at least 32 characters (e.g. `openssl rand -hex 32`)."
  }
}

variable "server_token_env" {
  type        = string
  description = "Environment variable that gpufan.yaml's server.token_env names (the front door's bearer token, checked on top of the function key)."
  default     = "GPUFAN_TOKEN"

  validation {
    condition     = can(regex("^[A-Z_][A-Z0-9_]*$", var.server_token_env))
    error_message = "server_token_env must be an upper-case environment variable name."
  }
}

variable "server_token" {
  type        = string
  description = "Optional bearer token the front door requires (x-functions-key carries the function key, so Authorization is free for it). Null: not set."
  default     = null
  sensitive   = true
}

variable "worker_image" {
  type = object({
    repository      = string
    tag             = string
    registry_server = optional(string)
    acr_id          = optional(string)
  })
  description = "Worker image, e.g. {repository = \"myacr.azurecr.io/gpufan-worker\", tag = \"0.1.0\"}. registry_server: pull with the module's managed identity; acr_id: grant it AcrPull on that registry."

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.worker_image.tag)) && lower(var.worker_image.tag) != "latest"
    error_message = "worker_image.tag must be a valid image tag other than 'latest' (pin a version, e.g. 0.1.0)."
  }
  validation {
    condition     = !strcontains(var.worker_image.repository, "@") && !can(regex(":[^/]*$", var.worker_image.repository))
    error_message = "worker_image.repository takes no tag or digest: set worker_image.tag."
  }
}

variable "aca" {
  type = object({
    workload_profile_type = optional(string, "Consumption-GPU-NC8as-T4")
    cpu                   = optional(number, 8)
    memory                = optional(string, "56Gi")
    min_replicas          = optional(number, 0)
    max_replicas          = optional(number, 1)
    external_ingress      = optional(bool, true)
    concurrency           = optional(number, 4)
    timeout_s             = optional(number, 120)
    cold_start_s          = optional(number, 60)
    usd_per_hour          = number
    log_analytics_id      = optional(string)
  })
  description = "The Container Apps GPU worker (the `aca` target), on a serverless GPU workload profile of a workload-profiles environment. usd_per_hour is required: gpufan's price book has no Container Apps GPU row (read the meter from the Azure Retail Prices API)."

  validation {
    condition     = contains(["Consumption-GPU-NC8as-T4", "Consumption-GPU-NC24-A100"], var.aca.workload_profile_type)
    error_message = "aca.workload_profile_type must be Consumption-GPU-NC8as-T4 or Consumption-GPU-NC24-A100 (serverless GPU profiles)."
  }
  validation {
    condition     = var.aca.min_replicas >= 0 && var.aca.max_replicas >= 1 && var.aca.min_replicas <= var.aca.max_replicas && var.aca.max_replicas <= 1000
    error_message = "aca needs 0 <= min_replicas <= max_replicas <= 1000 and max_replicas >= 1."
  }
  validation {
    condition     = var.aca.usd_per_hour >= 0 && var.aca.concurrency >= 1
    error_message = "aca.usd_per_hour must be >= 0 and aca.concurrency >= 1."
  }
}

variable "aci" {
  type = object({
    enabled      = optional(bool, false)
    cpu          = optional(number, 4)
    memory_gb    = optional(number, 16)
    concurrency  = optional(number, 4)
    usd_per_hour = optional(number)
  })
  description = "Optional Container Instances group running the worker on CPU (the `aci` target; ACI GPU SKUs are retired). usd_per_hour is required when enabled."
  default     = {}

  validation {
    condition     = !var.aci.enabled || var.aci.usd_per_hour != null
    error_message = "aci.usd_per_hour is required when aci.enabled is true."
  }
  validation {
    condition     = var.aci.cpu >= 1 && var.aci.memory_gb >= 1
    error_message = "aci.cpu and aci.memory_gb must be at least 1."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}

variable "models_prefix" {
  description = "Where in the models container the model repository lives ({model}/{version}/model.onnx under it); workers read it with --model-repo az://ACCOUNT/CONTAINER/PREFIX"
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
