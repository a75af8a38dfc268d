"""The streamer: runs jobs by priority, streams from the LLM, publishes chunks and events."""
