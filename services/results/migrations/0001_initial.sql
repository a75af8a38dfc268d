-- Jobs, their results, the lifecycle events seen (idempotency) and the chunks of each attempt.

CREATE TABLE jobs (
    job_id              text PRIMARY KEY,
    user_id             text,            -- null until job.accepted arrives (it may come late)
    status              text NOT NULL,
    job_type            text,
    priority            text,
    prompt              text,
    config              jsonb,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    model               text,
    attempt             integer NOT NULL DEFAULT 0,
    submitted_at        timestamptz,
    started_at          timestamptz,     -- first attempt's start
    attempt_started_at  timestamptz,     -- current attempt's start
    first_token_at      timestamptz,
    finished_at         timestamptz,
    queue_wait_ms       double precision,
    error_reason        text,
    error_type          text,
    first_seen_at       timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The list endpoint: a user's jobs newest first, keyset on (submitted_at, job_id).
CREATE INDEX jobs_user_submitted ON jobs (user_id, submitted_at DESC, job_id DESC);
CREATE INDEX jobs_submitted ON jobs (submitted_at DESC, job_id DESC);
-- Queue position: queued jobs of one band in submission order.
CREATE INDEX jobs_queued_band ON jobs (priority, submitted_at) WHERE status = 'queued';
-- Retention sweep.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE results (
    job_id              text PRIMARY KEY REFERENCES jobs (job_id) ON DELETE CASCADE,
    attempt             integer NOT NULL,
    model               text,
    response            text,
    parsed_response     jsonb,
    parse_error         text,
    finish_reason       text,
    prompt_tokens       integer NOT NULL DEFAULT 0,
    completion_tokens   integer NOT NULL DEFAULT 0,
    total_tokens        integer NOT NULL DEFAULT 0,
    estimated_cost_usd  numeric(18, 8) NOT NULL DEFAULT 0,
    processing_time_ms  double precision,
    ttft_ms             double precision,
    tokens_per_second   double precision,
    queue_wait_ms       double precision,
    chunks              integer,
    severity_breakdown  jsonb,
    completed_at        timestamptz NOT NULL
);

CREATE TABLE events (
    event_id     uuid PRIMARY KEY,   -- the idempotency key of every lifecycle record
    job_id       text NOT NULL,
    type         text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    applied      boolean NOT NULL,   -- false: an illegal or out-of-date move, kept but ignored
    payload      jsonb NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_job ON events (job_id, occurred_at);

CREATE TABLE chunks (
    job_id          text NOT NULL,
    attempt         integer NOT NULL,
    seq             integer NOT NULL,
    text            text NOT NULL,
    tokens          integer NOT NULL,
    first_token_at  timestamptz NOT NULL,
    emitted_at      timestamptz NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);
