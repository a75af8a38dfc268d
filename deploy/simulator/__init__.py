"""An OpenAI-compatible LLM simulator: deterministic tokens, OpenAI's exact SSE format, faults."""
