"""The results service: persists lifecycle events and chunks to PostgreSQL and serves reads."""
