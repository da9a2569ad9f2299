output "api_url" {
  description = "The HTTP API and the dashboard (GET /), behind the ALB."
  value       = "${var.certificate_arn == "" ? "http" : "https"}://${aws_lb.api.dns_name}/"
}

output "lake_url" {
  description = "The lake, as Tributary's [lake] url."
  value       = "s3://${aws_s3_bucket.lake.bucket}/${var.lake_prefix}"
}

output "kafka_brokers" {
  description = "Bootstrap servers the tasks use."
  value       = local.kafka_brokers
}

output "cluster_name" {
  description = "The ECS cluster (run a one-off `tributary batch run` or `batch rollback` in it)."
  value       = aws_ecs_cluster.this.name
}

output "batch_task_definition" {
  description = "The batch task definition family, for ad-hoc runs."
  value       = aws_ecs_task_definition.tributary["batch"].family
}
