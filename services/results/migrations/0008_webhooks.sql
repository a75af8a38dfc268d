-- Webhooks: the URL each job named, each delivery of a job's final event, every try of it.
-- Written by the webhook planner and deliverer (services/results/webhook_*.py), not by the
-- persister: no foreign key to jobs, whose row may be stored after the delivery starts.
CREATE TABLE webhook_jobs (
    job_id      text PRIMARY KEY,
    user_id     text NOT NULL,
    url         text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    webhook_id        text PRIMARY KEY,   -- msg_<job_id>_<final status>, the same on every try
    job_id            text NOT NULL,
    user_id           text NOT NULL,
    url               text NOT NULL,
    event_type        text NOT NULL,
    status            text NOT NULL,      -- pending | delivered | failed
    attempts          integer NOT NULL DEFAULT 0,
    handed_on         integer NOT NULL DEFAULT 0,  -- the last try whose retry record is produced
    first_attempt_at  timestamptz,
    next_attempt_at   timestamptz,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (first_attempt_at)
    WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    webhook_id       text NOT NULL REFERENCES webhook_deliveries (webhook_id) ON DELETE CASCADE,
    attempt          integer NOT NULL,
    attempted_at     timestamptz NOT NULL,
    status_code      integer,            -- null: no answer (connection error, timeout, refused)
    error            text,
    duration_ms      double precision NOT NULL,
    next_attempt_at  timestamptz,        -- null: no further try
    PRIMARY KEY (webhook_id, attempt)
);
