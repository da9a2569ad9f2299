variable "name" {
  description = "Name of this deployment: prefixes every resource (lowercase letters, digits and '-')."
  type        = string
  default     = "tributary"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: 2 to 31 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "region" {
  description = "AWS region to deploy in."
  type        = string
  default     = "eu-west-1"
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC the services, the ALB and MSK run in."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two, in different zones) for the ECS tasks and MSK."
  type        = list(string)
}

variable "alb_subnet_ids" {
  description = "Subnets of the load balancer: private ones for an internal ALB (the default), public ones for an internet-facing one."
  type        = list(string)
}

variable "alb_internal" {
  description = "Whether the ALB is internal (reachable from the VPC only). An internet-facing ALB needs certificate_arn and [auth] tokens in the configuration secret."
  type        = bool
  default     = true
}

variable "allowed_cidrs" {
  description = "CIDR blocks allowed to reach the ALB (HTTP API, dashboard)."
  type        = list(string)
  default     = ["10.0.0.0/8"]
}

variable "certificate_arn" {
  description = "ACM certificate for an HTTPS listener on the ALB; empty serves plain HTTP (internal ALBs only)."
  type        = string
  default     = ""
}

variable "image" {
  description = "The tributary container image (built from the repository's Dockerfile and pushed to a registry ECS can pull from)."
  type        = string
}

variable "kafka_brokers" {
  description = "Bootstrap servers of an existing Kafka cluster (host:port,...). Empty creates an MSK cluster."
  type        = string
  default     = ""
}

variable "msk_instance_type" {
  description = "Broker instance type of the MSK cluster created when kafka_brokers is empty."
  type        = string
  default     = "kafka.m7g.large"
}

variable "msk_broker_count" {
  description = "Brokers of the MSK cluster (a multiple of the number of private subnets)."
  type        = number
  default     = 2
}

variable "kafka_topic" {
  description = "Topic of the events (create it with as many partitions as the speed layer should scale to)."
  type        = string
  default     = "events"
}

variable "lake_bucket_name" {
  description = "Name of the S3 bucket of the lake (globally unique). The lake lives under the prefix lake_prefix."
  type        = string
}

variable "lake_prefix" {
  description = "Prefix of the lake inside the bucket; the task roles may touch nothing else."
  type        = string
  default     = "tributary"
}

variable "quarantine_expiration_days" {
  description = "Days after which quarantined (malformed) events expire from the lake."
  type        = number
  default     = 90
}

variable "serving_count" {
  description = "Speed + serving tasks behind the ALB (each consumes every partition: read scaling)."
  type        = number
  default     = 2
}

variable "serving_cpu" {
  description = "CPU units of a speed + serving task."
  type        = number
  default     = 2048
}

variable "serving_memory" {
  description = "Memory (MiB) of a speed + serving task: it holds the speed layer's states and the live batch versions within [serving] memory_budget_mb."
  type        = number
  default     = 8192
}

variable "batch_schedule" {
  description = "EventBridge Scheduler expression of the batch recompute (`tributary batch run`); the lake's run lock keeps runs from overlapping."
  type        = string
  default     = "rate(15 minutes)"
}

variable "batch_cpu" {
  description = "CPU units of the batch task."
  type        = number
  default     = 4096
}

variable "batch_memory" {
  description = "Memory (MiB) of the batch task."
  type        = number
  default     = 16384
}

variable "config_secret_arn" {
  description = "Secrets Manager secret whose text is a Tributary configuration file (tokens under [auth]), handed to every task as TRIBUTARY_CONFIG_TOML. Empty: the built-in defaults and the variables below."
  type        = string
  default     = ""
}

variable "log_retention_days" {
  description = "Days the tasks' logs are kept in CloudWatch."
  type        = number
  default     = 365
}

variable "log_kms_key_arn" {
  description = "KMS key for the log groups and the lake bucket; empty uses AWS-managed encryption."
  type        = string
  default     = ""
}

variable "ballista_executors" {
  description = "Ballista executors the batch recompute runs its slices on ([batch] engine = \"ballista\", with one scheduler task); 0 runs the recompute inside the batch task."
  type        = number
  default     = 0
  validation {
    condition     = var.ballista_executors >= 0
    error_message = "ballista_executors: 0 or more."
  }
}

variable "ballista_executor_cpu" {
  description = "CPU units of a Ballista executor task (its task slots: one per vCPU)."
  type        = number
  default     = 2048
}

variable "ballista_executor_memory" {
  description = "Memory (MiB) of a Ballista executor task: [batch] memory_limit_mb per slot, plus headroom."
  type        = number
  default     = 4096
}
