-- Failed and cancelled jobs keep what they streamed; their usage may be counted, not reported.
ALTER TABLE results ADD COLUMN usage_estimated boolean NOT NULL DEFAULT false;
