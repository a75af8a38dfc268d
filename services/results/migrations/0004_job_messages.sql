-- A messages job's conversation, as submitted; prompt jobs keep their prompt and leave it null.
ALTER TABLE jobs ADD COLUMN messages jsonb;
