# Optional leader lock table. Schema as src/election/dynamodb.rs expects it: partition key
# lock_key (S), TTL on expires_at (garbage collection of locks abandoned for a week only).
resource "aws_dynamodb_table" "lock" {
  count        = var.enable_dynamodb_lock && var.create_lock_table ? 1 : 0
  name         = local.lock_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "lock_key"

  attribute {
    name = "lock_key"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  server_side_encryption {
    enabled = true
  }

  point_in_time_recovery {
    enabled = false
  }

  tags = local.tags
}
