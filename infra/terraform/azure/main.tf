# gpufan on Azure: a Function App front door (HTTP, storage-queue jobs, control-loop timer) and a
# Container Apps serverless GPU worker for the `aca` backend, with an optional CPU worker on
# Container Instances (`aci`). App settings and entry points are the ones functions/README.md and
# functions/azure/function_app.py define; tests/infra cross-checks them.

data "azurerm_client_config" "current" {}

data "azurerm_resource_group" "this" {
  name = var.resource_group_name
}

locals {
  location = coalesce(var.location, data.azurerm_resource_group.this.location)
  rg       = data.azurerm_resource_group.this.name
  # Storage accounts and Key Vaults need globally unique names: a short, stable suffix.
  suffix = substr(sha1("${data.azurerm_client_config.current.subscription_id}/${var.resource_group_name}/${var.name}"), 0, 6)
  tags   = merge({ "gpufan-module" = "azure", "gpufan-name" = var.name }, var.tags)

  worker_port = 8080 # gpu_containers/Dockerfile EXPOSE and CMD --port
  # The image's CMD with the repository in the models container instead of baked in: the worker
  # mirrors it at start and polls it for new versions (gpu_containers/sources.py).
  models_url = "az://${azurerm_storage_account.this.name}/${azurerm_storage_container.models.name}/${var.models_prefix}"
  worker_args = [
    "--model-repo", local.models_url, "--host", "0.0.0.0", "--port", tostring(local.worker_port),
    "--repository-poll-secs", tostring(var.repository_poll_secs),
  ]
  worker_health_path = "/v2/health/ready"
  worker_live_path   = "/v2/health/live"
  worker_image       = "${var.worker_image.repository}:${var.worker_image.tag}"
  gpu_profile        = "gpu"
  # Accelerator names as in core/data/accelerators.csv.
  accelerators = {
    "Consumption-GPU-NC8as-T4"  = "T4"
    "Consumption-GPU-NC24-A100" = "A100-80GB"
  }
  server_token = nonsensitive(var.server_token != null)

  # App settings functions/azure/function_app.py reads (functions/README.md).
  app_settings = merge(
    {
      GPUFAN_CONFIG                  = "/home/site/wwwroot/${var.config_file}"
      GPUFAN_STORAGE                 = "@Microsoft.KeyVault(SecretUri=${azurerm_key_vault_secret.storage.versionless_id})"
      GPUFAN_JOBS_CONTAINER          = azurerm_storage_container.jobs.name
      GPUFAN_JOBS_QUEUE              = azurerm_storage_queue.jobs.name
      GPUFAN_CONTROL_SCHEDULE        = var.function_app.control_schedule
      (var.worker_token_env)         = "@Microsoft.KeyVault(SecretUri=${azurerm_key_vault_secret.worker_token.versionless_id})"
      AZURE_CLIENT_ID                = azurerm_user_assigned_identity.this.client_id # DefaultAzureCredential's identity
      SCM_DO_BUILD_DURING_DEPLOYMENT = "true"                                        # install requirements.txt remotely
      ENABLE_ORYX_BUILD              = "true"
    },
    { for s in azurerm_key_vault_secret.server_token : var.server_token_env => "@Microsoft.KeyVault(SecretUri=${s.versionless_id})" },
  )

  gpufan_targets = concat(
    [{
      name            = "${var.name}-aca-${lower(local.accelerators[var.aca.workload_profile_type])}"
      backend         = "aca"
      cloud           = "azure"
      region          = local.location
      accelerator     = local.accelerators[var.aca.workload_profile_type]
      pricing         = "serverless"
      usd_per_hour    = var.aca.usd_per_hour
      endpoint        = "https://${azurerm_container_app.this.ingress[0].fqdn}"
      max_concurrency = min(4096, var.aca.concurrency * var.aca.max_replicas)
      timeout_s       = var.aca.timeout_s
      cold_start_s    = var.aca.cold_start_s
      scale_to_zero   = var.aca.min_replicas == 0
      token_env       = var.worker_token_env
      options = {
        subscription_id = data.azurerm_client_config.current.subscription_id
        resource_group  = local.rg
        app             = azurerm_container_app.this.name
      }
    }],
    [for g in azurerm_container_group.aci : {
      name            = "${var.name}-aci-cpu"
      backend         = "aci"
      cloud           = "azure"
      region          = local.location
      accelerator     = "cpu"
      pricing         = "on_demand"
      usd_per_hour    = var.aci.usd_per_hour
      endpoint        = "http://${g.fqdn}:${local.worker_port}"
      max_concurrency = var.aci.concurrency
      timeout_s       = 30
      cold_start_s    = 0
      scale_to_zero   = false
      token_env       = var.worker_token_env
      options = {
        subscription_id = data.azurerm_client_config.current.subscription_id
        resource_group  = local.rg
        container_group = g.name
      }
    }],
  )
}

resource "azurerm_user_assigned_identity" "this" {
  name                = "${var.name}-${local.suffix}-id"
  location            = local.location
  resource_group_name = local.rg
  tags                = local.tags
}

# -------------------------------------------------------------------------------------- storage

resource "azurerm_storage_account" "this" {
  #checkov:skip=CKV_AZURE_59:the Function App's storage; closing its public endpoint needs VNet integration and private endpoints (a network this module does not own)
  #checkov:skip=CKV2_AZURE_33:as CKV_AZURE_59: private endpoints need a VNet this module does not own
  #checkov:skip=CKV_AZURE_206:ZRS: job data is transient and reproducible; geo-replication is not worth its cost
  #checkov:skip=CKV_AZURE_43:false positive: the name is computed (name + hash suffix + st) and validated in variables.tf
  #checkov:skip=CKV2_AZURE_40:GPUFAN_STORAGE and the Functions host use a connection string (functions/README.md)
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys; no customer-managed key to run for transient job data
  name                            = "${var.name}${local.suffix}st"
  resource_group_name             = local.rg
  location                        = local.location
  account_tier                    = "Standard"
  account_replication_type        = "ZRS"
  account_kind                    = "StorageV2"
  min_tls_version                 = "TLS1_2"
  https_traffic_only_enabled      = true
  allow_nested_items_to_be_public = false
  # The Functions host and GPUFAN_STORAGE (the triggers' `connection`) use a connection string.
  shared_access_key_enabled = true
  tags                      = local.tags

  blob_properties {
    versioning_enabled = true # results are keyed by the input's version (functions/README.md)
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }
  sas_policy {
    expiration_period = "01.00:00:00"
  }
  queue_properties {
    logging {
      read                  = true
      write                 = true
      delete                = true
      version               = "1.0"
      retention_policy_days = 30
    }
  }
}

resource "azurerm_storage_container" "jobs" {
  #checkov:skip=CKV2_AZURE_21:blob read logging needs a diagnostic setting and a Log Analytics workspace the caller owns
  name                  = var.function_app.jobs_container
  storage_account_id    = azurerm_storage_account.this.id
  container_access_type = "private"
}

resource "azurerm_storage_container" "models" {
  #checkov:skip=CKV2_AZURE_21:blob read logging needs a diagnostic setting and a Log Analytics workspace the caller owns
  name                  = "models"
  storage_account_id    = azurerm_storage_account.this.id
  container_access_type = "private"
}

# The workers list and read the model repository through their identity, nothing more.
resource "azurerm_role_assignment" "models" {
  scope                = azurerm_storage_container.models.id
  role_definition_name = "Storage Blob Data Reader"
  principal_id         = azurerm_user_assigned_identity.this.principal_id
}

resource "azurerm_storage_queue" "jobs" {
  name               = var.function_app.jobs_queue
  storage_account_id = azurerm_storage_account.this.id
}

# BlobCreated under jobs/ -> the jobs queue (queue_job); the host moves a message that keeps
# failing to <queue>-poison after host.json's maxDequeueCount.
resource "azurerm_eventgrid_system_topic" "this" {
  name                = "${var.name}-${local.suffix}-storage"
  resource_group_name = local.rg
  location            = local.location
  source_resource_id  = azurerm_storage_account.this.id
  topic_type          = "Microsoft.Storage.StorageAccounts"
  tags                = local.tags
}

resource "azurerm_eventgrid_system_topic_event_subscription" "jobs" {
  name                 = "${var.name}-jobs"
  system_topic         = azurerm_eventgrid_system_topic.this.name
  resource_group_name  = local.rg
  included_event_types = ["Microsoft.Storage.BlobCreated"]
  subject_filter {
    subject_begins_with = "/blobServices/default/containers/${azurerm_storage_container.jobs.name}/blobs/jobs/"
  }
  storage_queue_endpoint {
    storage_account_id = azurerm_storage_account.this.id
    queue_name         = azurerm_storage_queue.jobs.name
  }
}

# ------------------------------------------------------------------------------------ Key Vault

resource "azurerm_key_vault" "this" {
  #checkov:skip=CKV_AZURE_109:Key Vault references and Container Apps secrets are resolved over the public endpoint without a VNet
  #checkov:skip=CKV_AZURE_189:as CKV_AZURE_109
  #checkov:skip=CKV2_AZURE_32:private endpoints need a VNet this module does not own
  name                       = "${var.name}-${local.suffix}-kv"
  location                   = local.location
  resource_group_name        = local.rg
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  enable_rbac_authorization  = true
  purge_protection_enabled   = true
  soft_delete_retention_days = 7
  tags                       = local.tags

  network_acls {
    default_action = "Allow" # Key Vault references are resolved over the public endpoint
    bypass         = "AzureServices"
  }
}

resource "azurerm_role_assignment" "deployer_secrets" {
  scope                = azurerm_key_vault.this.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_key_vault_secret" "worker_token" {
  #checkov:skip=CKV_AZURE_41:static values rotated by re-applying; an expiry date would take the front door down when it passes
  name         = "worker-token"
  value        = var.worker_token
  key_vault_id = azurerm_key_vault.this.id
  content_type = "text/plain; bearer token (${var.worker_token_env})"
  tags         = local.tags
  depends_on   = [azurerm_role_assignment.deployer_secrets]
}

resource "azurerm_key_vault_secret" "storage" {
  #checkov:skip=CKV_AZURE_41:static values rotated by re-applying; an expiry date would take the front door down when it passes
  name         = "storage-connection"
  value        = azurerm_storage_account.this.primary_connection_string
  key_vault_id = azurerm_key_vault.this.id
  content_type = "text/plain; storage connection string (GPUFAN_STORAGE)"
  tags         = local.tags
  depends_on   = [azurerm_role_assignment.deployer_secrets]
}

resource "azurerm_key_vault_secret" "server_token" {
  #checkov:skip=CKV_AZURE_41:static values rotated by re-applying; an expiry date would take the front door down when it passes
  count        = local.server_token ? 1 : 0
  name         = "server-token"
  value        = var.server_token
  key_vault_id = azurerm_key_vault.this.id
  content_type = "text/plain; bearer token (${var.server_token_env})"
  tags         = local.tags
  depends_on   = [azurerm_role_assignment.deployer_secrets]
}

# The identity reads exactly these secrets, nothing else in the vault.
resource "azurerm_role_assignment" "secrets" {
  for_each = merge(
    { worker_token = azurerm_key_vault_secret.worker_token.resource_versionless_id, storage = azurerm_key_vault_secret.storage.resource_versionless_id },
    { for s in azurerm_key_vault_secret.server_token : "server_token" => s.resource_versionless_id },
  )
  scope                = each.value
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.this.principal_id
}

# ------------------------------------------------------------------------------ front door app

resource "azurerm_service_plan" "this" {
  #checkov:skip=CKV_AZURE_225:zone redundancy needs at least three always-on instances; the front door is stateless and cheap to redeploy
  #checkov:skip=CKV_AZURE_212:as CKV_AZURE_225
  name                = "${var.name}-${local.suffix}-plan"
  resource_group_name = local.rg
  location            = local.location
  os_type             = "Linux"
  sku_name            = var.function_app.sku_name
  tags                = local.tags
}

resource "azurerm_linux_function_app" "this" {
  #checkov:skip=CKV_AZURE_221:the front door is public by design; function keys (and server_token) authenticate callers
  name                            = "${var.name}-${local.suffix}-func"
  resource_group_name             = local.rg
  location                        = local.location
  service_plan_id                 = azurerm_service_plan.this.id
  storage_account_name            = azurerm_storage_account.this.name
  storage_account_access_key      = azurerm_storage_account.this.primary_access_key
  functions_extension_version     = "~4"
  https_only                      = true
  zip_deploy_file                 = var.package_zip
  key_vault_reference_identity_id = azurerm_user_assigned_identity.this.id
  app_settings                    = local.app_settings
  tags                            = local.tags

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.this.id]
  }

  site_config {
    minimum_tls_version = "1.2"
    ftps_state          = "Disabled"
    http2_enabled       = true
    application_stack {
      python_version = var.function_app.python_version
    }
  }

  depends_on = [azurerm_role_assignment.secrets]
}

# ---------------------------------------------------------------------------- GPU worker (ACA)

resource "azurerm_container_app_environment" "this" {
  name                       = "${var.name}-${local.suffix}-env"
  location                   = local.location
  resource_group_name        = local.rg
  log_analytics_workspace_id = var.aca.log_analytics_id
  tags                       = local.tags

  # A GPU profile can only be added when the environment is created, and only to a
  # workload-profiles environment (which always has the Consumption profile).
  workload_profile {
    name                  = "Consumption"
    workload_profile_type = "Consumption"
  }
  workload_profile {
    name                  = local.gpu_profile
    workload_profile_type = var.aca.workload_profile_type
  }
}

resource "azurerm_role_assignment" "acr_pull" {
  count                = var.worker_image.acr_id == null ? 0 : 1
  scope                = var.worker_image.acr_id
  role_definition_name = "AcrPull"
  principal_id         = azurerm_user_assigned_identity.this.principal_id
}

resource "azurerm_container_app" "this" {
  name                         = "${var.name}-worker"
  container_app_environment_id = azurerm_container_app_environment.this.id
  resource_group_name          = local.rg
  revision_mode                = "Single"
  workload_profile_name        = local.gpu_profile
  tags                         = local.tags

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.this.id]
  }

  secret {
    name                = "worker-token"
    key_vault_secret_id = azurerm_key_vault_secret.worker_token.versionless_id
    identity            = azurerm_user_assigned_identity.this.id
  }

  dynamic "registry" {
    for_each = var.worker_image.registry_server == null ? [] : [var.worker_image.registry_server]
    content {
      server   = registry.value
      identity = azurerm_user_assigned_identity.this.id
    }
  }

  ingress {
    external_enabled           = var.aca.external_ingress
    target_port                = local.worker_port
    transport                  = "auto"
    allow_insecure_connections = false
    traffic_weight {
      latest_revision = true
      percentage      = 100
    }
  }

  template {
    min_replicas = var.aca.min_replicas
    max_replicas = var.aca.max_replicas

    container {
      name   = "worker"
      image  = local.worker_image
      cpu    = var.aca.cpu
      memory = var.aca.memory
      args   = local.worker_args
      env {
        name        = var.worker_token_env
        secret_name = "worker-token"
      }
      env {
        name  = "AZURE_CLIENT_ID" # DefaultAzureCredential reads the models as this identity
        value = azurerm_user_assigned_identity.this.client_id
      }
      startup_probe {
        transport               = "HTTP"
        port                    = local.worker_port
        path                    = local.worker_health_path
        interval_seconds        = 5
        failure_count_threshold = 60 # model loading on a cold GPU replica: up to five minutes
      }
      readiness_probe {
        transport = "HTTP"
        port      = local.worker_port
        path      = local.worker_health_path
      }
      liveness_probe {
        transport = "HTTP"
        port      = local.worker_port
        path      = local.worker_live_path
      }
    }

    http_scale_rule {
      name                = "concurrent-requests"
      concurrent_requests = tostring(var.aca.concurrency)
    }
  }

  # The autoscaler (core/backends/aca.py) owns the replica bounds once the app exists.
  lifecycle {
    ignore_changes = [template[0].min_replicas, template[0].max_replicas]
  }
  depends_on = [azurerm_role_assignment.secrets, azurerm_role_assignment.acr_pull, azurerm_role_assignment.models]
}

# ----------------------------------------------------------------------- CPU worker (optional)

resource "azurerm_container_group" "aci" {
  #checkov:skip=CKV_AZURE_98:optional CPU worker with a public IP, reached by front doors on other clouds; the worker checks its bearer token
  #checkov:skip=CKV_AZURE_245:as CKV_AZURE_98
  count               = var.aci.enabled ? 1 : 0
  name                = "${var.name}-cpu-worker"
  location            = local.location
  resource_group_name = local.rg
  os_type             = "Linux"
  sku                 = "Standard"
  ip_address_type     = "Public"
  dns_name_label      = "${var.name}-${local.suffix}-cpu"
  restart_policy      = "Always"
  tags                = local.tags

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.this.id]
  }

  dynamic "image_registry_credential" {
    for_each = var.worker_image.registry_server == null ? [] : [var.worker_image.registry_server]
    content {
      server                    = image_registry_credential.value
      user_assigned_identity_id = azurerm_user_assigned_identity.this.id
    }
  }

  container {
    name   = "worker"
    image  = local.worker_image
    cpu    = var.aci.cpu
    memory = var.aci.memory_gb
    ports {
      port     = local.worker_port
      protocol = "TCP"
    }
    commands = concat(["gpufan", "worker"], local.worker_args) # ACI replaces the entrypoint
    secure_environment_variables = {
      AZURE_CLIENT_ID        = azurerm_user_assigned_identity.this.client_id # DefaultAzureCredential's identity (no secret; ACI's only kind checkov admits)
      (var.worker_token_env) = var.worker_token
    }
    readiness_probe {
      http_get {
        path   = local.worker_health_path
        port   = local.worker_port
        scheme = "http"
      }
      period_seconds = 10
    }
    liveness_probe {
      http_get {
        path   = local.worker_live_path
        port   = local.worker_port
        scheme = "http"
      }
      initial_delay_seconds = 60
      period_seconds        = 15
    }
  }
  depends_on = [azurerm_role_assignment.acr_pull, azurerm_role_assignment.models]
}

# --------------------------------------------------------------- control plane (least privilege)

# What core/backends/aca.py and aci.py do through Azure Resource Manager: read and scale the app,
# read (and, with options.create, create or delete) the container group.
resource "azurerm_role_definition" "control" {
  name        = "gpufan control plane (${var.name}-${local.suffix})"
  scope       = data.azurerm_resource_group.this.id
  description = "Read and scale gpufan's Container App; manage its Container Instances group."
  permissions {
    actions = [
      "Microsoft.App/containerApps/read",
      "Microsoft.App/containerApps/write",
      "Microsoft.App/managedEnvironments/join/action",
      "Microsoft.ContainerInstance/containerGroups/read",
      "Microsoft.ContainerInstance/containerGroups/write",
      "Microsoft.ContainerInstance/containerGroups/delete",
    ]
  }
  assignable_scopes = [data.azurerm_resource_group.this.id]
}

resource "azurerm_role_assignment" "control" {
  for_each = merge(
    { app = azurerm_container_app.this.id, environment = azurerm_container_app_environment.this.id },
    { for g in azurerm_container_group.aci : "aci" => g.id },
  )
  scope              = each.value
  role_definition_id = azurerm_role_definition.control.role_definition_resource_id
  principal_id       = azurerm_user_assigned_identity.this.principal_id
}
