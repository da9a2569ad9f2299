terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = merge({ "app" = "tributary", "stack" = var.name }, var.tags)
  }
}

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
