-- A retry is a new job that runs a failed or cancelled one again: it names that job, and a
-- job's view lists the jobs that retried it (looked up by this index).
ALTER TABLE jobs ADD COLUMN retry_of text;
CREATE INDEX jobs_retry_of ON jobs (retry_of, submitted_at) WHERE retry_of IS NOT NULL;
