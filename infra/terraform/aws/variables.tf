variable "name" {
  type        = string
  description = "Prefix of every resource name (functions, buckets, queues, Batch). Keep it short: S3 bucket names add the account id and region."
  default     = "gpufan"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.name))
    error_message = "name must be 2-20 characters of lower-case letters, digits and '-', starting with a letter."
  }
}

variable "lambda_zip" {
  type        = string
  description = "Path of dist/lambda.zip built by `gpufan package` (Terraform does not build packages); its manifest lambda.zip.json must lie beside it."

  validation {
    condition     = endswith(var.lambda_zip, ".zip")
    error_message = "lambda_zip must be the path of a .zip file, e.g. dist/lambda.zip."
  }
  validation {
    condition     = fileexists("${var.lambda_zip}.json")
    error_message = "lambda_zip has no manifest beside it (<zip>.json): build it with `gpufan package --out dist --with-deps`."
  }
}

variable "lambda_layers" {
  type        = list(string)
  description = "Layer ARNs holding the Python dependencies, for a zip built without --with-deps (pip install -t python/ with the platform flags the module README gives). Empty when the zip carries them."
  default     = []

  validation {
    condition     = length(var.lambda_layers) <= 5
    error_message = "Lambda accepts at most 5 layers per function."
  }
}

variable "lambda" {
  type = object({
    runtime              = optional(string, "python3.12")
    architecture         = optional(string, "x86_64")
    memory_mb            = optional(number, 1024)
    http_timeout_s       = optional(number, 30)
    job_timeout_s        = optional(number, 900)
    sqs_batch_size       = optional(number, 1)
    reserved_concurrency = optional(number, -1)
    log_retention_days   = optional(number, 365)
    log_level            = optional(string, "INFO")
  })
  description = "Settings shared by the three functions. reserved_concurrency -1 leaves the account's pool unreserved."
  default     = {}

  validation {
    condition     = contains(["python3.11", "python3.12", "python3.13"], var.lambda.runtime)
    error_message = "lambda.runtime must be python3.11, python3.12 or python3.13 (gpufan needs Python >= 3.11; python3.12 and later run on Amazon Linux 2023)."
  }
  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda.architecture)
    error_message = "lambda.architecture must be x86_64 or arm64 (and match the bundle: gpufan package --lambda-architecture)."
  }
  validation {
    condition     = var.lambda.memory_mb >= 128 && var.lambda.memory_mb <= 10240
    error_message = "lambda.memory_mb must be within Lambda's 128-10240 MB."
  }
  validation {
    condition     = var.lambda.http_timeout_s >= 1 && var.lambda.http_timeout_s <= 900 && var.lambda.job_timeout_s >= 1 && var.lambda.job_timeout_s <= 900
    error_message = "Lambda timeouts must be within 1-900 seconds."
  }
  validation {
    condition     = var.lambda.sqs_batch_size >= 1 && var.lambda.sqs_batch_size <= 10
    error_message = "lambda.sqs_batch_size must be 1-10 (a job can take minutes; keep batches small)."
  }
  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.lambda.log_retention_days)
    error_message = "lambda.log_retention_days must be a value CloudWatch Logs accepts (e.g. 30, 90, 365)."
  }
}

variable "config_file" {
  type        = string
  description = "Path of gpufan.yaml inside the package (`gpufan package` puts it at the root); GPUFAN_CONFIG is set to /var/task/<this>."
  default     = "gpufan.yaml"

  validation {
    condition     = !startswith(var.config_file, "/") && !strcontains(var.config_file, "..")
    error_message = "config_file is relative to the package root and may not contain '..'."
  }
}

variable "auth" {
  type = object({
    type          = optional(string, "AWS_IAM")
    jwt_issuer    = optional(string)
    jwt_audiences = optional(list(string), [])
  })
  description = "Who may call the HTTP API: AWS_IAM (SigV4-signed requests) or JWT (an OIDC issuer and its audiences)."
  default     = {}

  validation {
    condition     = contains(["AWS_IAM", "JWT"], var.auth.type)
    error_message = "auth.type must be AWS_IAM or JWT: the front door is never open to anonymous callers."
  }
  validation {
    condition     = var.auth.type != "JWT" || (var.auth.jwt_issuer != null && length(var.auth.jwt_audiences) > 0)
    error_message = "auth.type JWT needs auth.jwt_issuer and at least one auth.jwt_audiences entry."
  }
}

variable "worker_token_env" {
  type        = string
  description = "Environment variable holding the workers' bearer token: the worker's --token-env (default GPUFAN_WORKER_TOKEN) and the targets' token_env."
  default     = "GPUFAN_WORKER_TOKEN"

  validation {
    condition     = can(regex("^[A-Z_][A-Z0-9_]*$", var.worker_token_env))
    error_message = "worker_token_env must be an upper-case environment variable name."
  }
}

variable "worker_token" {
  type        = string
  description = "Bearer token the front door sends to HTTP workers (Container Apps, ACI, Cloud Run with auth bearer); stored in Secrets Manager and given to the functions as worker_token_env. The API's own callers authenticate through var.auth, which owns the Authorization header: leave gpufan.yaml's server.token_env unset here."
  sensitive   = true

  validation {
    condition     = length(var.worker_token) >= 32
    error_message = "worker_token must be at least 32 characters (e.g. `openssl rand -hex 32`)."
  }
}

variable "control_schedule" {
  type        = string
  description = "EventBridge schedule expression for the control loop (schedule_handler)."
  default     = "rate(1 minute)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.control_schedule))
    error_message = "control_schedule must be rate(...) or cron(...)."
  }
}

variable "staging_prefix" {
  type        = string
  description = "Key prefix of Batch shards in the staging bucket (the batch target's options.prefix)."
  default     = "gpufan/staging"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.staging_prefix))
    error_message = "staging_prefix must be a key prefix without leading or trailing '/'."
  }
}

variable "staging_expiry_days" {
  type        = number
  description = "Days after which staged shards are deleted even if a dispatch never cleaned up."
  default     = 3

  validation {
    condition     = var.staging_expiry_days >= 1
    error_message = "staging_expiry_days must be at least 1."
  }
}

variable "worker_image_tag" {
  type        = string
  description = "Tag of the worker image in this module's ECR repository (immutable tags: push a new tag per build)."

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.worker_image_tag)) && lower(var.worker_image_tag) != "latest"
    error_message = "worker_image_tag must be a valid image tag other than 'latest' (pin a version, e.g. 0.1.0)."
  }
}

variable "batch" {
  type = object({
    subnet_ids            = list(string)
    vpc_id                = string
    service_role_arn      = optional(string)
    instance_types        = optional(list(string), ["g4dn.xlarge"])
    accelerator           = optional(string, "T4")
    spot                  = optional(bool, true)
    on_demand             = optional(bool, true)
    max_vcpus             = optional(number, 64)
    vcpus                 = optional(number, 4)
    memory_mib            = optional(number, 15000)
    gpus                  = optional(number, 1)
    attempts              = optional(number, 2)
    timeout_s             = optional(number, 900)
    max_concurrency       = optional(number, 64)
    cold_start_s          = optional(number, 300)
    usd_per_hour          = optional(number)
    interruption_per_hour = optional(number)
  })
  description = "AWS Batch GPU capacity (service_role_arn null: Batch's service-linked role). One compute environment and job queue per kind (spot: SPOT_PRICE_CAPACITY_OPTIMIZED; on_demand: BEST_FIT_PROGRESSIVE), each exported as one gpufan target priced by instance_types[0] unless usd_per_hour is given."

  validation {
    condition     = var.batch.spot || var.batch.on_demand
    error_message = "Enable at least one of batch.spot and batch.on_demand."
  }
  validation {
    condition     = length(var.batch.subnet_ids) > 0
    error_message = "batch.subnet_ids needs at least one subnet with a route to S3 and ECR (NAT or VPC endpoints)."
  }
  validation {
    condition     = length(var.batch.instance_types) > 0 && alltrue([for t in var.batch.instance_types : !can(regex("^(p3|g3)", t))])
    error_message = "batch.instance_types must not be empty, and p3/g3 are not supported by the ECS_AL2023_NVIDIA AMI."
  }
  validation {
    condition     = var.batch.gpus >= 1 && var.batch.vcpus >= 1 && var.batch.memory_mib >= 1024
    error_message = "Each job needs at least 1 GPU, 1 vCPU and 1024 MiB."
  }
  validation {
    condition     = var.batch.attempts >= 1 && var.batch.attempts <= 10
    error_message = "batch.attempts must be 1-10 (AWS Batch's limit)."
  }
  validation {
    condition     = var.batch.timeout_s >= 60
    error_message = "batch.timeout_s must be at least 60 seconds (AWS Batch's minimum attempt duration)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}

variable "models_prefix" {
  description = "Where in the models bucket the model repository lives ({model}/{version}/model.onnx under it); workers read it with --model-repo s3://BUCKET/PREFIX"
  type        = string
  default     = "models"
  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.models_prefix))
    error_message = "models_prefix is a key prefix without leading or trailing slashes, e.g. models or prod/models."
  }
}
