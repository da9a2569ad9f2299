# The recompute on a Ballista cluster (issue 32), when ballista_executors > 0: one scheduler task
# found at scheduler.<name>.internal (Cloud Map), N executor tasks, and the scheduled batch task
# submitting its slices to them. All run Tributary's image (`tributary ballista ...`), so the
# view functions and the lake are the same everywhere.

locals {
  ballista       = var.ballista_executors > 0
  ballista_roles = local.ballista ? ["ballista-scheduler", "ballista-executor"] : []
  ballista_host  = "scheduler.${var.name}.internal"
  # Added to the batch task's environment when the recompute runs on the cluster.
  ballista_environment = local.ballista ? [
    { name = "TRIBUTARY_BATCH__ENGINE", value = "ballista" },
    { name = "TRIBUTARY_BATCH__BALLISTA_SCHEDULER", value = "df://${local.ballista_host}:50050" },
    # Slices submitted at once: the executors' slots.
    { name = "TRIBUTARY_BATCH__THREADS", value = tostring(var.ballista_executors * floor(var.ballista_executor_cpu / 1024)) },
  ] : []
  ballista_commands = {
    "ballista-scheduler" = ["ballista", "scheduler", "--bind", "0.0.0.0:50050"]
    "ballista-executor" = ["ballista", "executor", "--scheduler", "${local.ballista_host}:50050",
    "--bind", "0.0.0.0:50051", "--grpc-port", "50052", "--slots", tostring(floor(var.ballista_executor_cpu / 1024))]
  }
  ballista_sizes = {
    "ballista-scheduler" = { cpu = 1024, memory = 2048 }
    "ballista-executor"  = { cpu = var.ballista_executor_cpu, memory = var.ballista_executor_memory }
  }
  ballista_ports = {
    "ballista-scheduler" = [50050]
    "ballista-executor"  = [50051, 50052]
  }
  # What their containers set apart from the other roles' (ecs.tf): the image's HEALTHCHECK asks
  # the HTTP API, which these roles do not serve.
  ballista_containers = { for role in ["ballista-scheduler", "ballista-executor"] : role => {
    healthCheck = {
      command  = ["CMD-SHELL", "bash -c '</dev/tcp/127.0.0.1/${local.ballista_ports[role][0]}'"]
      interval = 10
      retries  = 3
    }
    stopTimeout = 30
  } }
}

resource "aws_service_discovery_private_dns_namespace" "ballista" {
  count       = local.ballista ? 1 : 0
  name        = "${var.name}.internal"
  description = "Where the batch task and the executors find the Ballista scheduler"
  vpc         = var.vpc_id
}

resource "aws_service_discovery_service" "scheduler" {
  count = local.ballista ? 1 : 0
  name  = "scheduler"
  dns_config {
    namespace_id = aws_service_discovery_private_dns_namespace.ballista[0].id
    dns_records {
      ttl  = 10
      type = "A"
    }
    routing_policy = "MULTIVALUE"
  }
  health_check_custom_config {
    failure_threshold = 1
  }
}

resource "aws_security_group" "ballista" {
  count       = local.ballista ? 1 : 0
  name        = "${var.name}-ballista"
  description = "Ballista: the scheduler (50050), the executors' Arrow Flight (50051) and task (50052) ports, between its members"
  vpc_id      = var.vpc_id

  ingress {
    description = "Scheduler and executor ports from the cluster members and the batch task"
    from_port   = 50050
    to_port     = 50052
    protocol    = "tcp"
    self        = true
  }

  egress {
    description = "Scheduler and executor ports of the cluster members"
    from_port   = 50050
    to_port     = 50052
    protocol    = "tcp"
    self        = true
  }
}

resource "aws_ecs_service" "ballista_scheduler" {
  count           = local.ballista ? 1 : 0
  name            = "${var.name}-ballista-scheduler"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.tributary["ballista-scheduler"].arn
  desired_count   = 1
  launch_type     = "FARGATE"
  # One scheduler: the old task stops before the new one starts (a run in flight then fails and
  # the next scheduled run recomputes; nothing is published half).
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id, aws_security_group.ballista[0].id]
    assign_public_ip = false
  }
  service_registries {
    registry_arn = aws_service_discovery_service.scheduler[0].arn
  }
}

resource "aws_ecs_service" "ballista_executors" {
  count           = local.ballista ? 1 : 0
  name            = "${var.name}-ballista-executors"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.tributary["ballista-executor"].arn
  desired_count   = var.ballista_executors
  launch_type     = "FARGATE"
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id, aws_security_group.ballista[0].id]
    assign_public_ip = false
  }
  depends_on = [aws_ecs_service.ballista_scheduler]
}
