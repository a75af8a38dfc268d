-- A model the workload file does not price has no cost (null), never a default one.
ALTER TABLE results ALTER COLUMN estimated_cost_usd DROP NOT NULL;
ALTER TABLE results ALTER COLUMN estimated_cost_usd DROP DEFAULT;
-- Of the prompt tokens, those served from the upstream's cache; of the completion tokens,
-- those spent reasoning (null: the upstream did not say).
ALTER TABLE results ADD COLUMN cached_tokens integer;
ALTER TABLE results ADD COLUMN reasoning_tokens integer;
-- Per breakdown field of the job type, the count of each value (severity_breakdown stays:
-- the API's older field, the same counts for a field named severity).
ALTER TABLE results ADD COLUMN breakdown jsonb;
