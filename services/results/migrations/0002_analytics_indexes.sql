-- Analytics scan jobs by submission time, per user for non-admins.
CREATE INDEX jobs_analytics ON jobs (COALESCE(submitted_at, first_seen_at));
CREATE INDEX jobs_user_analytics ON jobs (user_id, COALESCE(submitted_at, first_seen_at));
