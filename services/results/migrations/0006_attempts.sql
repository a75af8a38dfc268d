-- Every attempt of a job: the upstream and model that served it, how it ended, what it used.
-- A job falls back across upstreams and may continue a cut-short answer: each attempt is billed.
CREATE TABLE attempts (
    job_id             text NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    attempt            integer NOT NULL,
    upstream           text,
    model              text,
    continues          integer,  -- the attempt whose stream this one carried on
    status             text NOT NULL,
    prompt_tokens      integer,
    completion_tokens  integer,
    total_tokens       integer,
    cached_tokens      integer,
    reasoning_tokens   integer,
    usage_estimated    boolean NOT NULL DEFAULT false,
    cost_usd           numeric(14, 8),  -- null: the model is priced nowhere
    reason             text,
    started_at         timestamptz,
    ended_at           timestamptz,
    PRIMARY KEY (job_id, attempt)
);
