"""AnalyticsIngest: consumes analytics batches from SQS into DynamoDB and
serves a read API over what it stored."""
