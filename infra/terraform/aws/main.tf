# gpufan on AWS: the Lambda front door (HTTP API, S3 -> SQS jobs, scheduled control loop) and
# AWS Batch GPU capacity for the `batch` backend. Entry points and environment variables are the
# ones functions/README.md and core/backends/batch.py define; tests/infra cross-checks them.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  region    = data.aws_region.current.name
  partition = data.aws_partition.current.partition
  tags      = merge({ "gpufan:module" = "aws", "gpufan:name" = var.name }, var.tags)

  # functions.aws.handler's three entry points (functions/README.md).
  functions = {
    http     = { handler = "functions.aws.handler.http_handler", timeout = var.lambda.http_timeout_s }
    sqs      = { handler = "functions.aws.handler.sqs_handler", timeout = var.lambda.job_timeout_s }
    schedule = { handler = "functions.aws.handler.schedule_handler", timeout = var.lambda.job_timeout_s }
  }
  environment = {
    GPUFAN_CONFIG                = "/var/task/${var.config_file}"
    (var.worker_token_env)       = var.worker_token
    POWERTOOLS_SERVICE_NAME      = "gpufan"
    POWERTOOLS_LOG_LEVEL         = var.lambda.log_level
    POWERTOOLS_METRICS_NAMESPACE = "gpufan"
  }

  # `gpufan package` writes this manifest beside the zip: the platform it was built for, whether
  # its dependencies are inside, its sizes (core/cli/package.py).
  lambda_bundle = jsondecode(file("${var.lambda_zip}.json"))

  buckets = {
    code    = { expire_days = null, purpose = "Lambda bundles from gpufan package" }
    inputs  = { expire_days = null, purpose = "jobs/ in, results/ out" }
    staging = { expire_days = var.staging_expiry_days, purpose = "Batch shards, staged per dispatch" }
    models  = { expire_days = null, purpose = "the model repository workers read (gpufan worker --model-repo s3://)" }
  }
  jobs_prefix = "jobs/"

  # The worker image's ENTRYPOINT is `gpufan worker`; this is gpu_containers/worker.py's Batch
  # mode. GPUFAN_BATCH_MANIFEST and GPUFAN_BATCH_REGION are set by gpufan on each submit. Models
  # come from the models bucket (a Triton-style tree under models_prefix), not from the image.
  models_url    = "s3://${aws_s3_bucket.this["models"].id}/${var.models_prefix}"
  batch_command = ["--batch", "--model-repo", local.models_url]
  capacity = {
    for kind, c in {
      spot      = { type = "SPOT", allocation_strategy = "SPOT_PRICE_CAPACITY_OPTIMIZED", pricing = "spot", enabled = var.batch.spot }
      on_demand = { type = "EC2", allocation_strategy = "BEST_FIT_PROGRESSIVE", pricing = "on_demand", enabled = var.batch.on_demand }
    } : kind => c if c.enabled
  }
  job_definition_arns = [
    "arn:${local.partition}:batch:${local.region}:${local.account}:job-definition/${var.name}-worker",
    "arn:${local.partition}:batch:${local.region}:${local.account}:job-definition/${var.name}-worker:*",
  ]

  # One gpufan target per job queue, shaped like core.config.Target (core/cli/tfoutputs.py).
  gpufan_targets = [
    for kind, queue in aws_batch_job_queue.this : {
      name                  = "${var.name}-batch-${replace(kind, "_", "-")}"
      backend               = "batch"
      cloud                 = "aws"
      region                = local.region
      accelerator           = var.batch.accelerator
      pricing               = local.capacity[kind].pricing
      sku                   = var.batch.instance_types[0]
      usd_per_hour          = var.batch.usd_per_hour
      gpus                  = var.batch.gpus
      max_concurrency       = var.batch.max_concurrency
      timeout_s             = var.batch.timeout_s
      cold_start_s          = var.batch.cold_start_s
      scale_to_zero         = true
      interruption_per_hour = kind == "spot" ? var.batch.interruption_per_hour : null
      token_env             = null
      options = {
        job_queue      = queue.name
        job_definition = aws_batch_job_definition.this.name
        bucket         = aws_s3_bucket.this["staging"].id
        prefix         = var.staging_prefix
      }
    }
  ]
}

# ---------------------------------------------------------------- encryption (one key per module)

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:a key policy: Resource "*" means this key, and the account root must administer it
  #checkov:skip=CKV_AWS_111:a key policy: Resource "*" means this key
  #checkov:skip=CKV_AWS_356:a key policy: Resource "*" means this key
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy "*" means this key
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account}:log-group:*"]
    }
  }
  statement {
    sid       = "S3EventNotificationsToEncryptedQueue"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "gpufan ${var.name}: buckets, queues, logs, secret, Lambda environment, ECR"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# ------------------------------------------------------------------------------------- buckets

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:server access logs need a log bucket per account; use CloudTrail S3 data events or the organisation's log bucket
  #checkov:skip=CKV_AWS_144:job inputs, results and staged shards are transient and reproducible; no cross-region replica
  #checkov:skip=CKV2_AWS_62:code, staging and models need no event notifications (inputs has them: S3 -> SQS for jobs/)
  for_each = local.buckets
  bucket   = "${var.name}-${each.key}-${local.account}-${local.region}"
  tags     = merge(local.tags, { "gpufan:purpose" = each.value.purpose })
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each                = local.buckets
  bucket                  = aws_s3_bucket.this[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.this[each.key].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.this[each.key].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true
  }
}

# Versioning on both: job results are keyed by the input's version id (functions/README.md), and
# on staging the lifecycle rule below removes old versions within a day.
resource "aws_s3_bucket_versioning" "this" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.this[each.key].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.this[each.key].id

  rule {
    id     = "housekeeping"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
    noncurrent_version_expiration {
      noncurrent_days = each.value.expire_days == null ? 30 : 1
    }
  }

  dynamic "rule" {
    for_each = each.value.expire_days == null ? [] : [each.value.expire_days]
    content {
      id     = "expire-staged-shards"
      status = "Enabled"
      filter {
        prefix = "${var.staging_prefix}/"
      }
      expiration {
        days = rule.value
      }
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "bucket" {
  for_each = local.buckets
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.this[each.key].arn, "${aws_s3_bucket.this[each.key].arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  for_each   = local.buckets
  bucket     = aws_s3_bucket.this[each.key].id
  policy     = data.aws_iam_policy_document.bucket[each.key].json
  depends_on = [aws_s3_bucket_public_access_block.this]
}

# -------------------------------------------------------------------------------------- queues

resource "aws_sqs_queue" "dlq" {
  name                              = "${var.name}-jobs-dlq"
  message_retention_seconds         = 1209600 # 14 days, SQS's maximum: time to look at poison jobs
  kms_master_key_id                 = aws_kms_key.this.arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = local.tags
}

resource "aws_sqs_queue" "jobs" {
  name = "${var.name}-jobs"
  # AWS's advice for a Lambda event source: at least six times the function's timeout.
  visibility_timeout_seconds        = min(43200, 6 * var.lambda.job_timeout_s)
  message_retention_seconds         = 345600
  kms_master_key_id                 = aws_kms_key.this.arn
  kms_data_key_reuse_period_seconds = 300
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = 5
  })
  tags = local.tags
}

# Asynchronous invocations that keep failing (the scheduled control loop) land here.
resource "aws_sqs_queue" "lambda_dlq" {
  name                              = "${var.name}-lambda-dlq"
  message_retention_seconds         = 1209600
  kms_master_key_id                 = aws_kms_key.this.arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = local.tags
}

data "aws_iam_policy_document" "jobs_queue" {
  statement {
    sid       = "S3ObjectCreated"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.jobs.arn]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.this["inputs"].arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_sqs_queue_policy" "jobs" {
  queue_url = aws_sqs_queue.jobs.id
  policy    = data.aws_iam_policy_document.jobs_queue.json
}

resource "aws_s3_bucket_notification" "inputs" {
  bucket = aws_s3_bucket.this["inputs"].id
  queue {
    queue_arn     = aws_sqs_queue.jobs.arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = local.jobs_prefix
  }
  depends_on = [aws_sqs_queue_policy.jobs]
}

# ------------------------------------------------------------------------------------ functions

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lambda" {
  name               = "${var.name}-functions"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "lambda" {
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for g in aws_cloudwatch_log_group.lambda : "${g.arn}:*"]
  }
  statement {
    sid       = "JobObjects"
    actions   = ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"]
    resources = ["${aws_s3_bucket.this["inputs"].arn}/jobs/*", "${aws_s3_bucket.this["inputs"].arn}/results/*"]
  }
  statement {
    # Without ListBucket, S3 answers 403 instead of 404 for a missing object.
    sid       = "JobBucket"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this["inputs"].arn]
  }
  statement {
    sid       = "StagedShards"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.this["staging"].arn}/${var.staging_prefix}/*"]
  }
  statement {
    sid       = "StagingListing"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this["staging"].arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.staging_prefix}/*"]
    }
  }
  statement {
    sid       = "JobQueue"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.jobs.arn]
  }
  statement {
    sid       = "AsyncDeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.lambda_dlq.arn]
  }
  statement {
    sid       = "Encryption"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
  }
  statement {
    sid       = "SubmitShards"
    actions   = ["batch:SubmitJob"]
    resources = concat([for q in aws_batch_job_queue.this : q.arn], local.job_definition_arns)
  }
  statement {
    sid       = "StopShards"
    actions   = ["batch:TerminateJob"]
    resources = ["arn:${local.partition}:batch:${local.region}:${local.account}:job/*"]
  }
  statement {
    # Batch's Describe* calls support no resource-level permissions (Service Authorization
    # Reference, AWS Batch): "*" is the only resource they accept.
    sid       = "DescribeBatch"
    actions   = ["batch:DescribeJobs", "batch:DescribeJobQueues", "batch:DescribeJobDefinitions"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "lambda" {
  name   = "gpufan-functions"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda.json
}

resource "aws_iam_role_policy_attachment" "lambda_xray" {
  role       = aws_iam_role.lambda.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}

resource "aws_cloudwatch_log_group" "lambda" {
  for_each          = local.functions
  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.lambda.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

# The bundle reaches Lambda through S3: with its dependencies it is over the 50 MB a direct upload
# takes (CreateFunction's ZipFile); one fixed key, so the bucket's versioning keeps 30 days of
# earlier bundles and each function pins the version it runs.
resource "aws_s3_object" "lambda_zip" {
  bucket      = aws_s3_bucket.this["code"].id
  key         = "functions/lambda.zip"
  source      = var.lambda_zip
  source_hash = filebase64sha256(var.lambda_zip)
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
  depends_on  = [aws_s3_bucket_versioning.this]
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_117:the front door calls workers on other clouds over the internet; a VPC would add a NAT gateway and cold-start latency for no isolation gain
  #checkov:skip=CKV_AWS_272:the zip comes from `gpufan package` in CI; code signing needs an AWS Signer profile, out of scope for this module
  for_each                       = local.functions
  function_name                  = "${var.name}-${each.key}"
  description                    = "gpufan ${each.key} entry point (${each.value.handler})"
  role                           = aws_iam_role.lambda.arn
  s3_bucket                      = aws_s3_object.lambda_zip.bucket
  s3_key                         = aws_s3_object.lambda_zip.key
  s3_object_version              = aws_s3_object.lambda_zip.version_id
  source_code_hash               = filebase64sha256(var.lambda_zip)
  handler                        = each.value.handler
  runtime                        = var.lambda.runtime
  architectures                  = [var.lambda.architecture]
  layers                         = var.lambda_layers
  memory_size                    = var.lambda.memory_mb
  timeout                        = each.value.timeout
  reserved_concurrent_executions = var.lambda.reserved_concurrency
  kms_key_arn                    = aws_kms_key.this.arn

  environment {
    variables = local.environment
  }
  tracing_config {
    mode = "Active"
  }
  dead_letter_config {
    target_arn = aws_sqs_queue.lambda_dlq.arn
  }
  logging_config {
    log_format = "Text" # Powertools already writes one JSON object per line
    log_group  = aws_cloudwatch_log_group.lambda[each.key].name
  }

  lifecycle {
    precondition {
      condition     = local.lambda_bundle.dependencies != "bundled" || (local.lambda_bundle.platform.runtime == var.lambda.runtime && local.lambda_bundle.platform.architecture == var.lambda.architecture)
      error_message = "lambda_zip's wheels were built for ${local.lambda_bundle.platform.runtime} ${local.lambda_bundle.platform.architecture}, not lambda.runtime/lambda.architecture ${var.lambda.runtime} ${var.lambda.architecture}: gpufan package --with-deps --lambda-runtime ${var.lambda.runtime} --lambda-architecture ${var.lambda.architecture}."
    }
    precondition {
      condition     = local.lambda_bundle.dependencies == "bundled" || length(var.lambda_layers) > 0
      error_message = "lambda_zip carries no dependencies (built without --with-deps) and lambda_layers is empty: the handlers could not import. Build with gpufan package --with-deps, or pass a layer."
    }
  }

  tags       = local.tags
  depends_on = [aws_iam_role_policy.lambda, aws_iam_role_policy_attachment.lambda_xray]
}

resource "aws_lambda_event_source_mapping" "jobs" {
  event_source_arn        = aws_sqs_queue.jobs.arn
  function_name           = aws_lambda_function.this["sqs"].arn
  batch_size              = var.lambda.sqs_batch_size
  function_response_types = ["ReportBatchItemFailures"]
}

# ------------------------------------------------------------------------------ HTTP front door

resource "aws_apigatewayv2_api" "this" {
  name          = var.name
  description   = "gpufan front door: Open Inference Protocol (/v2/...)"
  protocol_type = "HTTP"
  tags          = local.tags
}

resource "aws_apigatewayv2_integration" "this" {
  api_id                 = aws_apigatewayv2_api.this.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.this["http"].invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = min(30000, var.lambda.http_timeout_s * 1000)
}

resource "aws_apigatewayv2_authorizer" "jwt" {
  count            = var.auth.type == "JWT" ? 1 : 0
  api_id           = aws_apigatewayv2_api.this.id
  name             = "${var.name}-jwt"
  authorizer_type  = "JWT"
  identity_sources = ["$request.header.Authorization"]
  jwt_configuration {
    issuer   = var.auth.jwt_issuer
    audience = var.auth.jwt_audiences
  }
}

resource "aws_apigatewayv2_route" "this" {
  api_id             = aws_apigatewayv2_api.this.id
  route_key          = "ANY /{proxy+}"
  target             = "integrations/${aws_apigatewayv2_integration.this.id}"
  authorization_type = var.auth.type
  authorizer_id      = one(aws_apigatewayv2_authorizer.jwt[*].id)
}

resource "aws_cloudwatch_log_group" "api" {
  name              = "/aws/apigateway/${var.name}"
  retention_in_days = var.lambda.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_apigatewayv2_stage" "this" {
  api_id      = aws_apigatewayv2_api.this.id
  name        = "$default"
  auto_deploy = true
  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api.arn
    format = jsonencode({
      requestId = "$context.requestId", ip = "$context.identity.sourceIp",
      method    = "$context.httpMethod", path = "$context.path", status = "$context.status",
      latencyMs = "$context.responseLatency", error = "$context.integrationErrorMessage"
    })
  }
  tags = local.tags
}

resource "aws_lambda_permission" "api" {
  statement_id  = "AllowHttpApi"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this["http"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.this.execution_arn}/*/*"
}

# --------------------------------------------------------------------------------- control loop

resource "aws_cloudwatch_event_rule" "control" {
  name                = "${var.name}-control-loop"
  description         = "gpufan control loop (functions.aws.handler.schedule_handler)"
  schedule_expression = var.control_schedule
  tags                = local.tags
}

resource "aws_cloudwatch_event_target" "control" {
  rule = aws_cloudwatch_event_rule.control.name
  arn  = aws_lambda_function.this["schedule"].arn
  retry_policy {
    maximum_retry_attempts       = 0 # the next tick is the retry
    maximum_event_age_in_seconds = 60
  }
}

resource "aws_lambda_permission" "schedule" {
  statement_id  = "AllowEventBridge"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this["schedule"].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.control.arn
}

# ------------------------------------------------------------------------- worker image, secret

resource "aws_ecr_repository" "this" {
  name                 = "${var.name}/worker"
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.this.arn
  }
  tags = local.tags
}

resource "aws_secretsmanager_secret" "worker_token" {
  #checkov:skip=CKV2_AWS_57:a static bearer token shared with workers on other clouds; rotate by re-applying with a new worker_token
  name                    = "${var.name}/worker-token"
  description             = "Bearer token of gpufan's HTTP workers (${var.worker_token_env})"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "worker_token" {
  secret_id     = aws_secretsmanager_secret.worker_token.id
  secret_string = var.worker_token
}

# ---------------------------------------------------------------------------------- AWS Batch

resource "aws_security_group" "batch" {
  name_prefix = "${var.name}-batch-"
  description = "gpufan Batch GPU instances: nothing inbound; HTTPS out to S3, ECR and CloudWatch"
  vpc_id      = var.batch.vpc_id
  egress {
    description = "HTTPS to AWS APIs (S3, ECR, CloudWatch Logs, ECS)"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
  tags = local.tags
  lifecycle {
    create_before_destroy = true
  }
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name               = "${var.name}-batch-instance"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "instance" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_instance_profile" "batch" {
  name = "${var.name}-batch-instance"
  role = aws_iam_role.instance.name
  tags = local.tags
}

data "aws_iam_policy_document" "task_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "job" {
  name               = "${var.name}-batch-job"
  assume_role_policy = data.aws_iam_policy_document.task_assume.json
  tags               = local.tags
}

# gpu_containers/batch_job.py reads manifest.json and inputs.npz, writes outputs.npz; the worker
# lists and reads the model repository under models_prefix: nothing else.
data "aws_iam_policy_document" "job" {
  statement {
    sid       = "StagedShards"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.this["staging"].arn}/${var.staging_prefix}/*"]
  }
  statement {
    sid       = "ReadModels"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.this["models"].arn}/${var.models_prefix}/*"]
  }
  statement {
    sid       = "ListModels"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this["models"].arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.models_prefix}/*"]
    }
  }
  statement {
    sid       = "Encryption"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_role_policy" "job" {
  name   = "gpufan-batch-job"
  role   = aws_iam_role.job.id
  policy = data.aws_iam_policy_document.job.json
}

resource "aws_batch_compute_environment" "this" {
  for_each                        = local.capacity
  compute_environment_name_prefix = "${var.name}-${replace(each.key, "_", "-")}-"
  type                            = "MANAGED"
  state                           = "ENABLED"
  service_role                    = var.batch.service_role_arn # null: AWSServiceRoleForBatch

  compute_resources {
    type                = each.value.type
    allocation_strategy = each.value.allocation_strategy
    min_vcpus           = 0 # scale to zero: a dispatch's array job brings instances up
    max_vcpus           = var.batch.max_vcpus
    instance_type       = var.batch.instance_types
    subnets             = var.batch.subnet_ids
    security_group_ids  = [aws_security_group.batch.id]
    instance_role       = aws_iam_instance_profile.batch.arn
    ec2_configuration {
      image_type = "ECS_AL2023_NVIDIA" # the GPU AMI; not for p3/g3 (validated in variables.tf)
    }
    tags = local.tags
  }

  tags = local.tags
  lifecycle {
    create_before_destroy = true
  }
  depends_on = [aws_iam_role_policy_attachment.instance]
}

resource "aws_batch_job_queue" "this" {
  for_each = local.capacity
  name     = "${var.name}-${replace(each.key, "_", "-")}"
  state    = "ENABLED"
  priority = 1
  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.this[each.key].arn
  }
  tags = local.tags
}

resource "aws_batch_job_definition" "this" {
  name                  = "${var.name}-worker"
  type                  = "container"
  platform_capabilities = ["EC2"]
  propagate_tags        = true

  container_properties = jsonencode({
    image      = "${aws_ecr_repository.this.repository_url}:${var.worker_image_tag}"
    command    = local.batch_command
    jobRoleArn = aws_iam_role.job.arn
    user       = "10001" # the image's unprivileged `gpufan` user
    privileged = false
    resourceRequirements = [
      { type = "GPU", value = tostring(var.batch.gpus) },
      { type = "VCPU", value = tostring(var.batch.vcpus) },
      { type = "MEMORY", value = tostring(var.batch.memory_mib) },
    ]
  })

  # Exit 2 is a permanent error (bad input; gpu_containers/batch_job.py): never retried. A spot
  # reclaim ("Host EC2 (instance ...) terminated.") and exit 1 (transient) are retried here, and
  # gpufan re-dispatches what still fails to another target.
  retry_strategy {
    attempts = var.batch.attempts
    evaluate_on_exit {
      on_status_reason = "Host EC2*"
      action           = "RETRY"
    }
    evaluate_on_exit {
      on_exit_code = "1"
      action       = "RETRY"
    }
    evaluate_on_exit {
      on_reason = "*"
      action    = "EXIT"
    }
  }
  timeout {
    attempt_duration_seconds = var.batch.timeout_s
  }

  tags = local.tags
}
