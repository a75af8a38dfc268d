-- The analytics series (services/results/series.py) places jobs by when they started and
-- left their band's queue, and results by when they were stored: one index each, so a
-- window of the last hour reads that hour, not the whole table.
CREATE INDEX jobs_started ON jobs (started_at) WHERE started_at IS NOT NULL;
CREATE INDEX jobs_left_queue ON jobs
    ((greatest(coalesce(started_at, finished_at, 'infinity'::timestamptz), submitted_at)))
    WHERE priority IS NOT NULL;
CREATE INDEX results_completed ON results (completed_at);
