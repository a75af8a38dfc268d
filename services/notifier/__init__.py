"""The notifier: live fan-out of token chunks and lifecycle events over WebSocket and SSE."""
