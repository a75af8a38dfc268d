"""The local stack: real Kafka and PostgreSQL without Docker, plus the project's processes."""
