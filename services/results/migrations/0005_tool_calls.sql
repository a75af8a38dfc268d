-- The tool calls a completion made (id, type, function name and arguments), as the streamer
-- assembled them from the stream; null when it made none.
ALTER TABLE results ADD COLUMN tool_calls jsonb;
