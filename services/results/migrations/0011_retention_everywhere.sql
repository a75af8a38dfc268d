-- Retention used to clear a job's prompt, response and chunks but leave its messages, its
-- tool calls and the texts inside its stored facts. Clear those of every job it already swept
-- (finished, prompt cleared), as the sweep now does for each job it forgets.
UPDATE jobs SET messages = NULL, updated_at = now()
WHERE prompt IS NULL AND finished_at IS NOT NULL AND messages IS NOT NULL;

UPDATE results r SET tool_calls = NULL
FROM jobs j
WHERE r.job_id = j.job_id AND j.prompt IS NULL AND j.finished_at IS NOT NULL
  AND r.response IS NULL AND r.tool_calls IS NOT NULL;

UPDATE events e
SET payload = e.payload #- '{data,prompt}' #- '{data,messages}' #- '{data,response}' #- '{data,tool_calls}'
FROM jobs j
WHERE e.job_id = j.job_id AND j.prompt IS NULL AND j.finished_at IS NOT NULL
  AND e.type IN ('job.accepted', 'job.completed');
