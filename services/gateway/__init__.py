"""The gateway: the one public REST base URL.

It validates, authenticates, rate-limits and publishes commands; it forwards reads.
"""
