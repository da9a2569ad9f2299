# Kafka: an existing cluster (var.kafka_brokers), or an MSK cluster created here.

locals {
  create_msk    = var.kafka_brokers == ""
  kafka_brokers = local.create_msk ? aws_msk_cluster.kafka[0].bootstrap_brokers : var.kafka_brokers
}

resource "aws_security_group" "msk" {
  count       = local.create_msk ? 1 : 0
  name        = "${var.name}-msk"
  description = "MSK brokers: Kafka from the Tributary tasks only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "Kafka (plaintext inside the VPC) from the Tributary tasks"
    from_port       = 9092
    to_port         = 9092
    protocol        = "tcp"
    security_groups = [aws_security_group.tasks.id]
  }

  egress {
    description = "Replies and broker-to-broker traffic inside the VPC"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }
}

resource "aws_msk_cluster" "kafka" {
  #checkov:skip=CKV_AWS_81:Tributary's [kafka] section has no TLS client settings yet: plaintext inside the VPC, TLS between brokers.
  count                  = local.create_msk ? 1 : 0
  cluster_name           = "${var.name}-kafka"
  kafka_version          = "3.8.x"
  number_of_broker_nodes = var.msk_broker_count

  broker_node_group_info {
    instance_type   = var.msk_instance_type
    client_subnets  = var.private_subnet_ids
    security_groups = [aws_security_group.msk[0].id]
    storage_info {
      ebs_storage_info {
        volume_size = 500
      }
    }
  }

  encryption_info {
    encryption_in_transit {
      # Tributary's [kafka] section speaks plaintext to the brokers; traffic stays in the VPC.
      client_broker = "TLS_PLAINTEXT"
      in_cluster    = true
    }
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.tributary["kafka"].name
      }
    }
  }
}
