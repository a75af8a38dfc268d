"""Prometheus configuration, alert rules and the PromQL helpers that check them."""
