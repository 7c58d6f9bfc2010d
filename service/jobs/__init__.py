"""Durable jobs: records in SQLite, files in a spool folder, both under ``MSDN_DATA_DIR``.

Generic (no PACS, no model): :mod:`service.jobs.store` keeps job records (state, attempts, error,
result files, free-form ``info``) and per-job items; :mod:`service.jobs.files` writes files durably
(fsync before rename); :mod:`service.jobs.backoff` computes retry delays. The PACS jobs
(``service.pacs.jobs``) are built on them; so can any other background work (e.g. HTTP jobs).
"""

from service.jobs.backoff import Backoff
from service.jobs.store import Job, JobState, JobStore

__all__ = ["Backoff", "Job", "JobState", "JobStore"]
