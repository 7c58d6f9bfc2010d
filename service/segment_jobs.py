"""HTTP segmentation jobs (``/v1/jobs``) on the durable job store (:mod:`service.jobs`).

    POST /v1/jobs --inputs fsync'd to <data_dir>/jobs/<id>/inputs/--> queued
    queued --worker thread: service.request.run_request--> running --> done (every answer format rendered
                                                                  \\-> failed (the /segment error code)
    DELETE: queued/running -> cancelled (a running job stops at its next model batch); final -> deleted

Records are ``kind = "http-segment"`` rows of the shared store; ``info`` holds the form fields, the
input file names, ``progress`` (slices done / total) and timings. The store's states are reused;
a cancelled job is stored as ``failed`` with ``error_code = "cancelled"`` and answered as
``cancelled``. After a restart, jobs that were running are queued again (their inputs are on disk).
Finished jobs and their files are deleted ``job_ttl_s`` after they finished. At most
``max_queued_jobs`` jobs are queued or running; more are refused with 503 and Retry-After.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Optional

from msdn_core.errors import ErrorCode, MsdnError
from service.concurrency import Deadline
from service.errors import Overloaded, RequestTimeout
from service.jobs.files import remove_tree, write_durable
from service.jobs.store import Job, JobState, JobStore
from service.model import ModelRuntime
from service.pipeline import MEDIA_TYPES, render
from service.request import run_request
from service.settings import Settings

logger = logging.getLogger(__name__)

KIND = "http-segment"
CANCELLED = "cancelled"
ACTIVE = (JobState.QUEUED, JobState.RUNNING)
PROGRESS_EVERY_S = 0.5


def public_state(job: Job) -> str:
    """``queued``, ``running``, ``done``, ``failed`` or ``cancelled``."""
    if job.state == JobState.FAILED and job.error_code == CANCELLED:
        return CANCELLED
    return job.state.value


class JobCancelled(Exception):
    """Raised inside a running job that was cancelled."""


class ProgressDeadline(Deadline):
    """The ``Deadline`` a job runs under: no time limit; each check (before a model batch) counts
    that batch's items and stops a cancelled job."""

    def __init__(self, jobs: "SegmentJobs", job_id: str) -> None:
        super().__init__(None)
        self.jobs = jobs
        self.job_id = job_id
        self.items = 0

    def check(self) -> None:
        if self.job_id in self.jobs.cancelling:
            raise JobCancelled(self.job_id)
        self.items += self.jobs.runtime.next_batch_items()
        self.jobs.report_progress(self.job_id, self.items)


class SegmentJobs:
    """Accepts, runs, cancels and expires HTTP jobs (module docstring).

    Args:
        store: the job store under ``settings.data_dir``.
        runtime: the model.
        settings: limits, ``max_queued_jobs``, ``job_workers``, ``job_ttl_s``.
        poll_s: how often the workers look for work and expired jobs when nothing wakes them.
    """

    def __init__(self, store: JobStore, runtime: ModelRuntime, settings: Settings, *, poll_s: float = 1.0) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self.store = store
        self.runtime = runtime
        self.settings = settings
        self.poll_s = poll_s
        self.cancelling: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._progress_at: dict[str, float] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "SegmentJobs":
        """Queue again what was running when the last process stopped, then start the workers."""
        for job in self.store.list(kinds=[KIND], states=[JobState.RUNNING], limit=100000):
            self.store.update(job.id, state=JobState.QUEUED)
            logger.info("job %s: queued again after a restart", job.id)
        for job in self.store.list(kinds=[KIND], states=[JobState.RECEIVING], limit=100000):
            remove_tree(self.store.job_dir(job.id))  # inputs half written when the process stopped
            self.store.delete(job.id)
        self._stop.clear()
        for i in range(self.settings.job_workers):
            thread = threading.Thread(target=self._loop, name=f"msdn-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the workers; a running job is left ``running`` and resumes after a restart."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads.clear()

    # --- API side ------------------------------------------------------------------------------

    def submit(
        self,
        *,
        dicom: list[tuple[str, bytes]],
        volume: Optional[tuple[str, bytes]],
        reference: Optional[tuple[str, bytes]],
        form: dict[str, Any],
    ) -> Job:
        """Store the inputs durably and queue a job.

        Raises:
            Overloaded: ``max_queued_jobs`` jobs are already queued or running.
        """
        with self._lock:
            active = sum(self.store.count_by_state(kinds=[KIND])[s.value] for s in ACTIVE)
            if active >= self.settings.max_queued_jobs:
                raise Overloaded(
                    f"{active} jobs are queued or running, the limit is {self.settings.max_queued_jobs} "
                    "(MSDN_MAX_QUEUED_JOBS)",
                    retry_after_s=self.settings.retry_after_s,
                )
            job, _ = self.store.create(KIND, state=JobState.RECEIVING, info={"form": form})
        folder = self.store.job_dir(job.id) / "inputs"
        names: dict[str, Any] = {"dicom": [], "volume": None, "reference": None}
        for i, (name, data) in enumerate(dicom):
            write_durable(folder / "dicom" / f"{i:05d}", data)
            names["dicom"].append(name)
        if volume is not None:
            write_durable(folder / "volume", volume[1])
            names["volume"] = volume[0]
        if reference is not None:
            write_durable(folder / "reference", reference[1])
            names["reference"] = reference[0]
        job = self.store.transition(job.id, [JobState.RECEIVING], JobState.QUEUED, info={"inputs": names})
        if job is None:  # deleted while its inputs were written
            raise MsdnError("the job was deleted while its inputs were stored", code=ErrorCode.NOT_FOUND)
        logger.info("job %s: queued (%d file(s))", job.id, len(dicom) or 1)
        self._wake.set()
        return job

    def get(self, job_id: str) -> Optional[Job]:
        """The job, or None when unknown (or expired)."""
        job = self.store.get(job_id)
        return job if job is not None and job.kind == KIND else None

    def cancel_or_delete(self, job_id: str) -> Optional[Job]:
        """Cancel a queued/running job (returns it); delete a finished one (returns None)."""
        job = self.get(job_id)
        if job is None:
            return None
        if job.state == JobState.QUEUED:
            moved = self.store.transition(job_id, [JobState.QUEUED, JobState.RECEIVING], JobState.FAILED, **_cancel())
            if moved is not None:
                remove_tree(self.store.job_dir(job_id) / "inputs")
                return moved
            job = self.get(job_id)  # picked up meanwhile
            if job is None:
                return None
        if job.state == JobState.RUNNING:
            self.cancelling.add(job_id)
            return job
        remove_tree(self.store.job_dir(job_id))
        self.store.delete(job_id)
        return None

    def result_path(self, job: Job, fmt: str) -> Path:
        """The stored answer of a done job in ``fmt``."""
        return self.store.job_dir(job.id) / "result" / MEDIA_TYPES[fmt][1]

    def report_progress(self, job_id: str, items: int) -> None:
        """Called between model batches with the items (whole-slice runs: slices) started so far;
        written at most every ``PROGRESS_EVERY_S`` (each write is an fsync'd SQLite commit)."""
        now = time.monotonic()
        if now - self._progress_at.get(job_id, 0.0) < PROGRESS_EVERY_S:
            return
        self._progress_at[job_id] = now
        job = self.store.get(job_id)
        if job is None:
            return
        progress = dict(job.info.get("progress") or {})
        total = int(progress.get("slices_total") or 0)
        done = min(total, items) if total else 0
        if done != progress.get("slices_done"):
            self.store.update(job_id, info={"progress": {"slices_done": done, "slices_total": total}})

    # --- worker side ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.expire()
            ran = False
            for job in self.store.due(kinds=[KIND], limit=4):
                if self._stop.is_set():
                    return
                claimed = self.store.transition(
                    job.id, [JobState.QUEUED], JobState.RUNNING, first_attempt_at=time.time(), attempts=job.attempts + 1
                )
                if claimed is not None:
                    self._run(claimed)
                    ran = True
                    break
            if not ran:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def _run(self, job: Job) -> None:
        folder = self.store.job_dir(job.id)
        inputs = job.info.get("inputs") or {}
        form = job.info.get("form") or {}
        deadline = ProgressDeadline(self, job.id)
        t0 = time.time()
        handles = []

        def named(name: str, path: Path):
            fh = open(path, "rb")
            handles.append(fh)
            return (name, fh)

        try:
            dicom = [named(n, folder / "inputs" / "dicom" / f"{i:05d}") for i, n in enumerate(inputs.get("dicom", []))]
            volume = named(inputs["volume"], folder / "inputs" / "volume") if inputs.get("volume") else None
            reference = named(inputs["reference"], folder / "inputs" / "reference") if inputs.get("reference") else None
            if not dicom and volume is None:
                raise MsdnError("the job's inputs are gone", code=ErrorCode.INTERNAL_ERROR)
            total = len(dicom) if dicom else None
            if total:
                self.store.update(job.id, info={"progress": {"slices_done": 0, "slices_total": total}})
            result = run_request(
                deadline,
                runtime=self.runtime,
                settings=self.settings,
                dicom=dicom,
                volume=volume,
                spacing=form.get("spacing"),
                boxes=form.get("boxes"),
                reference=reference,
                series_uid=form.get("series_uid"),
                mode=form.get("mode") or "auto",
            )
            depth = result.image.shape[0]
            formats = ["json", "nifti", "png"] + (["dicom-seg"] if result.image.series is not None else [])
            for fmt in formats:
                body, _, filename = render(result, fmt, self.settings)  # type: ignore[arg-type]
                write_durable(folder / "result" / filename, body)
        except JobCancelled:
            self.store.update(job.id, **_cancel())
            self.cancelling.discard(job.id)
            remove_tree(folder / "inputs")
            logger.info("job %s: cancelled while running", job.id)
            return
        except MsdnError as exc:
            self._fail(job, exc.code.value, exc.message, t0)
            return
        except RequestTimeout as exc:  # pragma: no cover - jobs run without a time limit
            self._fail(job, ErrorCode.TIMEOUT.value, str(exc), t0)
            return
        except Exception as exc:  # noqa: BLE001 - a job must end in a final state, never vanish
            logger.exception("job %s: unexpected error", job.id)
            self._fail(job, ErrorCode.INTERNAL_ERROR.value, f"internal error ({type(exc).__name__})", t0)
            return
        finally:
            for fh in handles:
                fh.close()
        if job.id in self.cancelling:
            self.cancelling.discard(job.id)
            self.store.update(job.id, **_cancel())
            remove_tree(folder)
            return
        self.store.update(
            job.id,
            state=JobState.DONE,
            result_path=str(folder / "result"),
            info={
                "progress": {"slices_done": depth, "slices_total": depth},
                "formats": formats,
                "timing": {"run_s": round(time.time() - t0, 3), "total_s": result.timings["total_s"]},
                "mode": result.mode,
            },
        )
        remove_tree(folder / "inputs")
        self._progress_at.pop(job.id, None)
        logger.info("job %s: done in %.2f s", job.id, time.time() - t0)

    def _fail(self, job: Job, code: str, message: str, t0: float) -> None:
        self.store.update(
            job.id,
            state=JobState.FAILED,
            error_code=code,
            error=message,
            info={"timing": {"run_s": round(time.time() - t0, 3)}},
        )
        remove_tree(self.store.job_dir(job.id) / "inputs")
        logger.info("job %s: failed (%s)", job.id, code)

    def expire(self, now: Optional[float] = None) -> int:
        """Delete finished jobs older than ``job_ttl_s``; how many were deleted."""
        now = time.time() if now is None else now
        count = 0
        for job in self.store.list(kinds=[KIND], states=[JobState.DONE, JobState.FAILED], limit=100000):
            if now - job.updated_at > self.settings.job_ttl_s:
                remove_tree(self.store.job_dir(job.id))
                self.store.delete(job.id)
                count += 1
        return count


def store_exists(settings: Settings) -> bool:
    """Whether ``settings.data_dir`` already holds a job store (then jobs resume at start-up)."""
    return (Path(settings.data_dir) / "jobs.sqlite3").is_file()


def _cancel() -> dict[str, Any]:
    return {"state": JobState.FAILED, "error_code": CANCELLED, "error": "cancelled by DELETE /v1/jobs/{id}"}
