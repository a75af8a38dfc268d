"""The request of an attempt that continues a cut-short answer instead of restarting it.

The text streamed so far goes back as an assistant message, followed by an instruction to
carry on from its last word: every OpenAI-compatible server takes it (a provider's own
prefill, where one exists, is not portable). The answer's remaining length shrinks by
what was streamed, so a continued answer is not longer than a whole one.
"""

from __future__ import annotations

from typing import Any

from services.streamer.upstream import request_for
from shared.contracts import ResumeFrom, RunJobData
from shared.jobtypes import JobTypes

CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped, from the next"
    " word: do not repeat any of it and do not mention the interruption."
)


def continuation_request_for(
    job: RunJobData, resume: ResumeFrom, job_types: JobTypes
) -> dict[str, Any]:
    """`request_for(job)` with the partial answer and the continuation instruction appended."""
    request = request_for(job, job_types)
    request["messages"] = [
        *request["messages"],
        {"role": "assistant", "content": resume.text},
        {"role": "user", "content": CONTINUE_INSTRUCTION},
    ]
    for bound in ("max_tokens", "max_completion_tokens"):  # whichever the job sent
        if isinstance(request.get(bound), int):
            request[bound] = max(1, request[bound] - resume.tokens)
    return request


def asked_of(job: RunJobData, model: str) -> RunJobData:
    """The job as one hop asks it: the same request, for the hop's model."""
    if job.config.model == model:
        return job
    return job.model_copy(update={"config": job.config.model_copy(update={"model": model})})
