# terraform apply -var-file=example.tfvars (after replacing every value below)
name               = "tributary"
region             = "eu-west-1"
vpc_id             = "vpc-0123456789abcdef0"
private_subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
alb_subnet_ids     = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
image              = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/tributary:0.1.0"
lake_bucket_name   = "acme-analytics-lake"
# kafka_brokers    = "b-1.kafka.internal:9092,b-2.kafka.internal:9092"   # an existing cluster; else MSK
# config_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:tributary-config"
serving_count  = 2
batch_schedule = "rate(15 minutes)"

# The recompute on a Ballista cluster: a scheduler and this many executors (0: inside the batch task).
ballista_executors = 2
