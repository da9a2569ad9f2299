# ECS Fargate: the archiver (one task), the speed + serving service behind the ALB (N tasks), and
# the batch recompute as a scheduled one-shot task (`tributary batch run`).

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  # The Ballista roles (ballista.tf) share the task definition and log groups below.
  roles = concat(["archiver", "serving", "batch"], local.ballista_roles)
  environment = [
    { name = "TRIBUTARY_KAFKA__BROKERS", value = local.kafka_brokers },
    { name = "TRIBUTARY_KAFKA__TOPIC", value = var.kafka_topic },
    { name = "TRIBUTARY_LAKE__URL", value = "s3://${aws_s3_bucket.lake.bucket}/${var.lake_prefix}" },
    { name = "TRIBUTARY_SERVING__LISTEN", value = "0.0.0.0:8080" },
    { name = "TRIBUTARY_SERVING__PG_LISTEN", value = "" },
    { name = "AWS_REGION", value = data.aws_region.current.name },
  ]
  secrets = var.config_secret_arn == "" ? [] : [
    { name = "TRIBUTARY_CONFIG_TOML", valueFrom = var.config_secret_arn },
  ]
  commands = merge({
    archiver = ["serve", "--roles", "archiver"]
    serving  = ["serve", "--roles", "speed,serving"]
    batch    = ["batch", "run"]
  }, local.ballista_commands)
  sizes = merge({
    archiver = { cpu = 1024, memory = 2048 }
    serving  = { cpu = var.serving_cpu, memory = var.serving_memory }
    batch    = { cpu = var.batch_cpu, memory = var.batch_memory }
  }, local.ballista_sizes)
  ports = merge({ serving = [8080] }, local.ballista_ports)
}

resource "aws_cloudwatch_log_group" "tributary" {
  for_each          = toset(concat(local.roles, ["kafka"]))
  name              = "/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn == "" ? null : var.log_kms_key_arn
}

resource "aws_ecs_cluster" "this" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

# --- security groups ---------------------------------------------------------------------------

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "The ALB in front of the serving tasks"
  vpc_id      = var.vpc_id

  ingress {
    description = var.certificate_arn == "" ? "HTTP from the allowed networks" : "HTTPS from the allowed networks"
    from_port   = var.certificate_arn == "" ? 80 : 443
    to_port     = var.certificate_arn == "" ? 80 : 443
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }

  egress {
    description = "To the serving tasks"
    from_port   = 8080
    to_port     = 8080
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }
}

resource "aws_security_group" "tasks" {
  name        = "${var.name}-tasks"
  description = "Tributary tasks: the HTTP API from the ALB only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "HTTP API from the ALB"
    from_port       = 8080
    to_port         = 8080
    protocol        = "tcp"
    security_groups = [aws_security_group.alb.id]
  }

  egress {
    description = "S3, ECR, CloudWatch and Secrets Manager over HTTPS"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "Kafka brokers inside the VPC (plaintext, TLS and IAM listeners)"
    from_port   = 9092
    to_port     = 9098
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }

  egress {
    description = "The VPC's DNS resolver"
    from_port   = 53
    to_port     = 53
    protocol    = "udp"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }
}

# --- IAM -----------------------------------------------------------------------------------------

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "execution" {
  #checkov:skip=CKV_AWS_356:ecr:GetAuthorizationToken has no resource-level permissions; the pull actions could be scoped to one repository, which the image variable does not name.
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for group in aws_cloudwatch_log_group.tributary : "${group.arn}:*"]
  }
  statement {
    sid       = "PullImage"
    actions   = ["ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = ["*"]
  }
  dynamic "statement" {
    for_each = var.config_secret_arn == "" ? [] : [var.config_secret_arn]
    content {
      sid       = "ConfigurationSecret"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "execution"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# The tasks' own role: the lake's prefix, nothing else of the bucket.
resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "lake_access" {
  statement {
    sid       = "ListThePrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.lake_prefix, "${var.lake_prefix}/*"]
    }
  }
  statement {
    sid       = "ObjectsUnderThePrefix"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.lake.arn}/${var.lake_prefix}/*"]
  }
  dynamic "statement" {
    for_each = var.log_kms_key_arn == "" ? [] : [var.log_kms_key_arn]
    content {
      sid       = "LakeEncryptionKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "lake_access" {
  name   = "lake"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.lake_access.json
}

# --- tasks and services --------------------------------------------------------------------------

resource "aws_ecs_task_definition" "tributary" {
  for_each                 = toset(local.roles)
  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = local.sizes[each.key].cpu
  memory                   = local.sizes[each.key].memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  container_definitions = jsonencode([merge({
    name                   = each.key
    image                  = var.image
    command                = local.commands[each.key]
    essential              = true
    readonlyRootFilesystem = false
    environment            = each.key == "batch" ? concat(local.environment, local.ballista_environment) : local.environment
    secrets                = local.secrets
    portMappings           = [for port in lookup(local.ports, each.key, []) : { containerPort = port, protocol = "tcp" }]
    # SIGTERM drains HTTP, writes what the archiver buffered, cancels a recompute before it publishes.
    stopTimeout = 60
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.tributary[each.key].name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = each.key
      }
    }
  }, lookup(local.ballista_containers, each.key, {}))])
}

resource "aws_ecs_service" "archiver" {
  name            = "${var.name}-archiver"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.tributary["archiver"].arn
  desired_count   = 1
  launch_type     = "FARGATE"
  # One archiver at a time: the old task stops before the new one starts.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }
}

resource "aws_ecs_service" "serving" {
  name                              = "${var.name}-serving"
  cluster                           = aws_ecs_cluster.this.id
  task_definition                   = aws_ecs_task_definition.tributary["serving"].arn
  desired_count                     = var.serving_count
  launch_type                       = "FARGATE"
  health_check_grace_period_seconds = 120
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.serving.arn
    container_name   = "serving"
    container_port   = 8080
  }
  depends_on = [aws_lb_listener.api]
}

# --- the load balancer ---------------------------------------------------------------------------

resource "aws_lb" "api" {
  #checkov:skip=CKV_AWS_91:ALB access logs need a log bucket with the ELB account's policy, the operator's to provide.
  name                       = "${var.name}-api"
  internal                   = var.alb_internal
  load_balancer_type         = "application"
  subnets                    = var.alb_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = true
}

resource "aws_lb_target_group" "serving" {
  name                 = "${var.name}-serving"
  port                 = 8080
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  health_check {
    # Ready only once the speed layer has caught up: a task that is behind takes no queries.
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "api" {
  #checkov:skip=CKV_AWS_103:Without certificate_arn the listener is plain HTTP, for internal ALBs only (see alb_internal); with one it uses a TLS 1.2/1.3 policy.
  #checkov:skip=CKV_AWS_2:Same: plain HTTP only without a certificate.
  load_balancer_arn = aws_lb.api.arn
  port              = var.certificate_arn == "" ? 80 : 443
  protocol          = var.certificate_arn == "" ? "HTTP" : "HTTPS"
  certificate_arn   = var.certificate_arn == "" ? null : var.certificate_arn
  ssl_policy        = var.certificate_arn == "" ? null : "ELBSecurityPolicy-TLS13-1-2-2021-06"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.serving.arn
  }
}

# --- the scheduled batch run ---------------------------------------------------------------------

data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  name               = "${var.name}-scheduler"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
}

data "aws_iam_policy_document" "scheduler" {
  statement {
    sid       = "RunTheBatchTask"
    actions   = ["ecs:RunTask"]
    resources = [trimsuffix(aws_ecs_task_definition.tributary["batch"].arn, ":${aws_ecs_task_definition.tributary["batch"].revision}")]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }
  statement {
    sid       = "PassTheTaskRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.execution.arn, aws_iam_role.task.arn]
  }
}

resource "aws_iam_role_policy" "scheduler" {
  name   = "run-batch"
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.scheduler.json
}

resource "aws_scheduler_schedule" "batch" {
  #checkov:skip=CKV_AWS_297:The schedule holds only ARNs and a network configuration: nothing a customer key would protect.
  name                = "${var.name}-batch"
  schedule_expression = var.batch_schedule
  flexible_time_window {
    mode = "OFF"
  }
  target {
    arn      = aws_ecs_cluster.this.arn
    role_arn = aws_iam_role.scheduler.arn
    ecs_parameters {
      task_definition_arn = trimsuffix(aws_ecs_task_definition.tributary["batch"].arn, ":${aws_ecs_task_definition.tributary["batch"].revision}")
      launch_type         = "FARGATE"
      network_configuration {
        subnets          = var.private_subnet_ids
        security_groups  = concat([aws_security_group.tasks.id], aws_security_group.ballista[*].id)
        assign_public_ip = false
      }
    }
    retry_policy {
      maximum_retry_attempts = 0
    }
  }
}
