terraform {
  # 1.9 allows variable validations to refer to other variables (zones vs region).
  required_version = ">= 1.9.0"

  required_providers {
    scaleway = {
      source  = "scaleway/scaleway"
      version = "~> 2.50"
    }
  }

  # State lives in Scaleway Object Storage (S3-compatible). The settings are
  # given at init time so that no bucket, key or credential is committed:
  #   terraform init -backend-config=backend.hcl
  # See backend.hcl.example and README.md.
  backend "s3" {}
}

provider "scaleway" {
  project_id = var.project_id
  region     = var.region
  zone       = var.zones[0]
}
