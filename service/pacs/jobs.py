"""PACS jobs on the durable job store: pushed series and ``POST /v1/pacs/segment`` results.

Push listener (kind ``pacs-push``, one job per SeriesInstanceUID)::

    C-STORE --check_instance--> refused (failure status, instance listed as dropped in the job)
            \\--> <data_dir>/jobs/<id>/instances/<SOPInstanceUID>.dcm (fsync'd) --> Success
    quiet for idle_s and no open association sent it  -->  queued
    queued --segment (inference limiter)--> result.dcm (fsync'd, deterministic UIDs) --store--> done
                                                          \\-- transient failure --> retrying
                                                               (backoff, Retry-After, deadline) --> failed, SEG kept

Instances are de-duplicated by SOP Instance UID; an instance of a series whose job is finished
re-opens the job only when it is new (a plain resend changes nothing: no second SEG). SEG UIDs
derive from the series, the model's SHA-256 and the instances used (``service.pacs.uids``).

``pacs-segment`` jobs record an HTTP request; when its SEG could not be stored, the job keeps the
SEG and retries the store in the background like a pushed series.

After a restart (:meth:`PacsJobs.start`): series still receiving complete ``idle_s`` later, jobs
that were running are queued again (a built SEG is only stored, not rebuilt), and retries resume.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import pydicom
from pydicom import Dataset

from msdn_core.errors import ErrorCode
from service.jobs.backoff import Backoff
from service.jobs.files import remove_tree, write_durable
from service.jobs.store import FINAL_STATES, Job, JobState, JobStore
from service.pacs.base import StoreResult, sort_instances
from service.pacs.errors import PacsError, is_transient
from service.pacs.intake import Refusal, check_instance
from service.pacs.metrics import PacsJobMetrics
from service.pacs.uids import assign_result_uids

logger = logging.getLogger(__name__)

KIND_PUSH = "pacs-push"
KIND_SEGMENT = "pacs-segment"
KINDS = (KIND_PUSH, KIND_SEGMENT)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700

#: Segments a series: datasets in, a DICOM SEG out (runs under the inference limiter).
Segmenter = Callable[[list[Dataset]], Dataset]
#: Stores a SEG to the PACS (raises a PacsError on failure).
Deliverer = Callable[[Dataset], StoreResult]


class RetryLater(Exception):
    """Raised by a Segmenter when the work should be tried again later (e.g. the service is busy)."""

    def __init__(self, message: str, *, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, PacsError):
        return exc.error_code.value
    code = getattr(exc, "code", None)
    if isinstance(code, ErrorCode):
        return code.value
    if isinstance(code, str) and code:
        return code
    if isinstance(exc, ValueError):
        return ErrorCode.INVALID_INPUT.value
    return ErrorCode.INTERNAL_ERROR.value


def _client_error(exc: BaseException) -> bool:
    """A 4xx domain error (the input cannot be segmented): retrying will not help."""
    status = getattr(exc, "status", None)  # MsdnError (the service pipeline's domain errors)
    if isinstance(status, int) and 400 <= status < 500:
        return True
    return isinstance(exc, ValueError)


class PacsJobs:
    """Receives pushed instances, runs PACS jobs, retries deliveries (module docstring).

    Args:
        store: the job store (``MSDN_DATA_DIR``).
        segment: the segmentation step (raises :class:`RetryLater` when busy).
        deliver: stores a SEG to the PACS; None keeps results on disk only.
        model_id: the model's SHA-256 (or another stable id of the pipeline), for result UIDs.
        modality_allowed: the modality policy applied at C-STORE time.
        idle_s: a series is complete after this many quiet seconds (and no open association).
        backoff: delivery retry policy.
        max_instances / max_bytes: per-series limits (refused with 0xA700 beyond them).
        max_pending_series: most series receiving at once.
        workers: jobs run at once (segmentation is bounded by the inference limiter anyway).
        metrics: Prometheus families to update.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        segment: Segmenter,
        deliver: Optional[Deliverer],
        model_id: Callable[[], str],
        modality_allowed: Callable[[str], bool] = lambda modality: True,
        idle_s: float = 5.0,
        backoff: Backoff = Backoff(),
        max_instances: int = 2000,
        max_bytes: int = 2 * 1024**3,
        max_pending_series: int = 16,
        workers: int = 2,
        metrics: Optional[PacsJobMetrics] = None,
    ) -> None:
        if idle_s <= 0:
            raise ValueError(f"idle_s must be > 0, got {idle_s}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.store = store
        self.segment = segment
        self.deliver = deliver
        self.model_id = model_id
        self.modality_allowed = modality_allowed
        self.idle_s = idle_s
        self.backoff = backoff
        self.max_instances = max_instances
        self.max_bytes = max_bytes
        self.max_pending_series = max_pending_series
        self.metrics = metrics or PacsJobMetrics(None, store, KINDS)
        self._lock = threading.Lock()
        self._last_seen: dict[str, float] = {}  # job id -> monotonic time of its last instance
        self._bytes: dict[str, int] = {}
        self._open: dict[int, set[str]] = {}  # association id -> job ids it delivered instances of
        self._running: set[str] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msdn-pacs-job")
        self.workers = workers

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PacsJobs:
        """Resume what a previous process left, then start the scheduler thread."""
        self._recover()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="msdn-pacs-jobs", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop scheduling; running jobs finish (or are resumed after a restart)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _recover(self) -> None:
        now = time.monotonic()
        for job in self.store.list(kinds=KINDS, states=[JobState.RECEIVING, JobState.RUNNING], limit=100000):
            if job.state == JobState.RECEIVING:
                self._last_seen[job.id] = now
                logger.info("PACS job %s: series %s resumes receiving", job.id, job.info.get("series_uid"))
            elif job.kind == KIND_SEGMENT and not job.result_path:
                self.store.update(
                    job.id,
                    state=JobState.FAILED,
                    error_code=ErrorCode.INTERNAL_ERROR.value,
                    error="the service stopped while the request ran",
                )
            else:
                state = JobState.RETRYING if job.result_path else JobState.QUEUED
                self.store.update(job.id, state=state, next_attempt_at=time.time())
                logger.info("PACS job %s resumed after a restart (%s)", job.id, state.value)

    # --- receiving (Storage SCP threads) -----------------------------------------------------

    def receive(self, data: bytes, dataset: Dataset, calling_ae: str, association_id: int) -> int | Dataset:
        """Take one pushed instance; returns the C-STORE status to answer.

        Args:
            data: the instance as a DICOM Part 10 file (what is spooled).
            dataset: the same, decoded (lazily) with its file meta.
            calling_ae: the sender's AE title.
            association_id: identifies the association (see :meth:`association_closed`).
        """
        try:
            series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
            sop_uid = str(dataset.get("SOPInstanceUID", "") or "")
            study_uid = str(dataset.get("StudyInstanceUID", "") or "")
        except Exception:  # noqa: BLE001 - unparseable header
            series_uid = sop_uid = study_uid = ""
        refusal = check_instance(dataset, modality_allowed=self.modality_allowed)
        if not series_uid:
            return self._refuse(None, sop_uid, refusal or Refusal(0xA900, ErrorCode.MISSING_ATTRIBUTE, "no series"))
        with self._lock:
            job = self.store.find(f"{KIND_PUSH}:{series_uid}")
            if job is None or job.state != JobState.RECEIVING:
                receiving = sum(1 for j in self._last_seen)
                if receiving >= self.max_pending_series and (job is None or job.id not in self._last_seen):
                    logger.warning("push listener: %d series receiving, refused series %s", receiving, series_uid)
                    self.metrics.refused.labels(code=ErrorCode.LIMIT_EXCEEDED.value).inc()
                    return STATUS_OUT_OF_RESOURCES
            if job is None:
                job, _ = self.store.create(
                    KIND_PUSH,
                    key=f"{KIND_PUSH}:{series_uid}",
                    state=JobState.RECEIVING,
                    info={"series_uid": series_uid, "study_uid": study_uid, "calling_ae": calling_ae},
                )
                logger.info("push listener: series %s from %s -> job %s", series_uid, calling_ae, job.id)
            if refusal is not None:
                return self._refuse(job, sop_uid, refusal)
            known = self.store.item(job.id, sop_uid)
            if known is not None and known.state == "ok":
                # A resend of what we have (same SOP Instance UID): nothing new to segment.
                if job.state == JobState.RECEIVING:
                    self._last_seen[job.id] = time.monotonic()
                    self._open.setdefault(association_id, set()).add(job.id)
                else:
                    logger.info("push listener: %s of series %s already received (job %s)", sop_uid, series_uid, job.id)
                self.metrics.duplicates.inc()
                return STATUS_SUCCESS
            if job.state != JobState.RECEIVING:
                if job.id in self._running or job.state in (JobState.QUEUED, JobState.RUNNING):
                    pass  # the running job sees the new instance when it finishes and re-opens
                else:
                    self._reopen(job)
            ok = self.store.count_items(job.id, state="ok")
            nbytes = self._bytes.get(job.id, 0) + len(data)
            if ok + 1 > self.max_instances or nbytes > self.max_bytes:
                logger.warning(
                    "push listener: series %s over max_instances=%d / max_series_bytes=%d",
                    series_uid,
                    self.max_instances,
                    self.max_bytes,
                )
                return self._refuse(
                    job,
                    sop_uid,
                    Refusal(STATUS_OUT_OF_RESOURCES, ErrorCode.SERIES_TOO_LARGE, "series over the size limits"),
                )
            self._bytes[job.id] = nbytes
            current = self.store.get(job.id)
            if current is not None and current.state == JobState.RECEIVING:
                self._last_seen[job.id] = time.monotonic()
            # The association counts as sending this series from now: it cannot complete meanwhile.
            self._open.setdefault(association_id, set()).add(job.id)
            path = self.store.job_dir(job.id) / "instances" / f"{sop_uid}.dcm"  # sop_uid: digits and dots
        write_durable(path, data)  # on disk (fsync'd) before we answer Success; outside the lock
        self.store.set_item(job.id, sop_uid, state="ok", info={"bytes": len(data)})
        self.metrics.received.inc()
        return STATUS_SUCCESS

    def _refuse(self, job: Optional[Job], sop_uid: str, refusal: Refusal) -> Dataset:
        self.metrics.refused.labels(code=refusal.code.value).inc()
        logger.warning(
            "push listener: refused instance %s%s: %s (status 0x%04X)",
            sop_uid or "?",
            f" (job {job.id})" if job is not None else "",
            refusal.message,
            refusal.status,
        )
        if job is not None and sop_uid:
            self.store.set_item(
                job.id, sop_uid, state="dropped", info={"code": refusal.code.value, "reason": refusal.message}
            )
            if job.id not in self._last_seen and job.state == JobState.RECEIVING:
                self._last_seen[job.id] = time.monotonic()
        return refusal.status_dataset()

    def _reopen(self, job: Job) -> None:
        """A finished series got a new instance: receive again, then segment the whole series again."""
        logger.info("push listener: series %s got new instances, job %s re-opened", job.info.get("series_uid"), job.id)
        self.store.update(
            job.id,
            state=JobState.RECEIVING,
            attempts=0,
            error=None,
            error_code=None,
            first_attempt_at=None,
            next_attempt_at=None,
            result_path=None,
        )
        self._last_seen[job.id] = time.monotonic()

    def association_closed(self, association_id: int) -> None:
        """An association ended: its series may complete once quiet."""
        with self._lock:
            self._open.pop(association_id, None)
        self._wake.set()

    # --- HTTP jobs ---------------------------------------------------------------------------

    def create_segment_job(self, *, study_uid: str, series_uid: str, store_result: bool) -> Job:
        job, _ = self.store.create(
            KIND_SEGMENT,
            state=JobState.RUNNING,
            info={"study_uid": study_uid, "series_uid": series_uid, "store_result": store_result},
        )
        return job

    def finish_segmentation(self, job: Job, seg: Dataset, datasets: list[Dataset]) -> Dataset:
        """Give a job's SEG its deterministic UIDs and keep it on disk (before any store)."""
        assign_result_uids(
            seg,
            series_uid=str(job.info.get("series_uid")),
            model_sha256=self.model_id(),
            sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets],
        )
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, seg, enforce_file_format=True)
        path = write_durable(self.store.job_dir(job.id) / "result.dcm", buffer.getvalue())
        self.store.update(
            job.id,
            result_path=str(path),
            info={
                "seg_sop_instance_uid": str(seg.SOPInstanceUID),
                "seg_series_uid": str(seg.SeriesInstanceUID),
                "instances": len(datasets),
            },
        )
        return seg

    def fail(self, job: Job, exc: BaseException) -> None:
        self._finish_failed(job, _error_code(exc), str(exc) or type(exc).__name__)

    def done(self, job: Job) -> None:
        self.store.update(job.id, state=JobState.DONE, error=None, error_code=None)
        self.metrics.finished.labels(state="done").inc()

    def deliver_now(self, job_id: str) -> Job:
        """One delivery attempt of a job's kept SEG; on a transient failure the job is left retrying."""
        job = self.store.get(job_id)
        assert job is not None
        return self._deliver(job)

    # --- scheduling --------------------------------------------------------------------------

    def _loop(self) -> None:
        tick = min(0.25, self.idle_s / 4)
        while not self._stop.is_set():
            try:
                self._complete_quiet_series()
                self._run_due()
            except Exception:  # noqa: BLE001 - keep scheduling; the error is logged
                logger.exception("PACS job scheduler failed; continuing")
            self._wake.wait(tick)
            self._wake.clear()

    def _complete_quiet_series(self) -> None:
        now = time.monotonic()
        with self._lock:
            busy = set().union(*self._open.values()) if self._open else set()
            quiet = [j for j, seen in self._last_seen.items() if now - seen >= self.idle_s and j not in busy]
            for job_id in quiet:
                del self._last_seen[job_id]
                self._bytes.pop(job_id, None)
        for job_id in quiet:
            job = self.store.transition(job_id, [JobState.RECEIVING], JobState.QUEUED)
            if job is not None:
                logger.info("push listener: series %s complete (job %s)", job.info.get("series_uid"), job_id)

    def _run_due(self) -> None:
        free = self.workers - len(self._running)
        if free <= 0:
            return
        for job in self.store.due(kinds=KINDS, limit=free + len(self._running)):
            if job.id in self._running or len(self._running) >= self.workers:
                continue
            claimed = self.store.transition(job.id, [JobState.QUEUED, JobState.RETRYING], JobState.RUNNING)
            if claimed is None:
                continue
            with self._lock:
                self._running.add(job.id)
            self._executor.submit(self._execute, claimed)

    def _execute(self, job: Job) -> None:
        try:
            if job.result_path and Path(job.result_path).exists():
                self._deliver(job)
            elif job.kind == KIND_PUSH:
                self._segment_series(job)
            else:
                self._finish_failed(job, ErrorCode.INTERNAL_ERROR.value, "the job's result file is missing")
        except Exception as exc:  # noqa: BLE001 - a job failure must not stop the scheduler
            logger.exception("PACS job %s failed", job.id)
            self._finish_failed(job, _error_code(exc), f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running.discard(job.id)
            self._after_run(job.id)

    def _after_run(self, job_id: str) -> None:
        """Instances that arrived while the job ran re-open it."""
        job = self.store.get(job_id)
        if job is None or job.kind != KIND_PUSH or job.state == JobState.RECEIVING:
            return
        used = int(job.info.get("instances_used", -1))
        ok = self.store.count_items(job_id, state="ok")
        if job.state in FINAL_STATES and used >= 0 and ok > used:
            with self._lock:
                self._reopen(job)

    def _segment_series(self, job: Job) -> None:
        folder = self.store.job_dir(job.id) / "instances"
        files = sorted(folder.glob("*.dcm")) if folder.exists() else []
        dropped = self.store.items(job.id, state="dropped")
        if not files:
            codes = sorted({d.info.get("code", "") for d in dropped})
            self._finish_failed(
                job,
                codes[0] if len(codes) == 1 else ErrorCode.NO_INPUT.value,
                f"no usable instance ({len(dropped)} refused at C-STORE)",
            )
            return
        datasets = sort_instances([pydicom.dcmread(f) for f in files])
        self.store.update(job.id, info={"instances_used": len(datasets)})
        started = time.perf_counter()
        try:
            seg = self.segment(datasets)
        except RetryLater as exc:
            self.store.update(job.id, state=JobState.RETRYING, next_attempt_at=time.time() + exc.retry_after_s)
            logger.info("PACS job %s: %s; retried in %.0f s", job.id, exc, exc.retry_after_s)
            return
        except Exception as exc:  # noqa: BLE001
            if _client_error(exc):
                self._finish_failed(job, _error_code(exc), str(exc))
                return
            raise
        if str(seg.get("Modality", "")) != "SEG":
            raise TypeError(f"the series pipeline must return a DICOM SEG, got Modality={seg.get('Modality')!r}")
        self.finish_segmentation(job, seg, datasets)
        logger.info(
            "PACS job %s: series %s, %d instances (%d dropped) segmented in %.2f s -> SEG %s",
            job.id,
            job.info.get("series_uid"),
            len(datasets),
            len(dropped),
            time.perf_counter() - started,
            seg.SOPInstanceUID,
        )
        job = self.store.get(job.id)
        assert job is not None
        self._deliver(job)

    def _deliver(self, job: Job) -> Job:
        assert job.result_path
        if self.deliver is None or (job.kind == KIND_SEGMENT and not job.info.get("store_result", True)):
            return self.complete_without_store(job.id)
        try:
            seg = pydicom.dcmread(job.result_path)
            self.deliver(seg)
        except Exception as exc:  # noqa: BLE001 - recorded: retried or failed, the SEG kept
            return self.record_delivery(job.id, exc)
        return self.record_delivery(job.id, None)

    def complete_without_store(self, job_id: str) -> Job:
        """The job's SEG went to the caller (or storing is off): done, files removed."""
        self.store.update(job_id, state=JobState.DONE, error=None, error_code=None)
        self.metrics.finished.labels(state="done").inc()
        self._cleanup(job_id)
        return self.store.get(job_id)  # type: ignore[return-value]

    def record_delivery(self, job_id: str, exc: Optional[BaseException]) -> Job:
        """Book one store attempt of the job's SEG: done, retrying at the next back-off time, or failed."""
        job = self.store.get(job_id)
        assert job is not None
        now = time.time()
        first = job.first_attempt_at or now
        attempts = job.attempts + 1
        seg_uid = job.info.get("seg_sop_instance_uid")
        if attempts > 1:
            self.metrics.retries.inc()
        if exc is None:
            self.store.update(
                job_id,
                state=JobState.DONE,
                attempts=attempts,
                first_attempt_at=first,
                error=None,
                error_code=None,
                next_attempt_at=None,
            )
            self.metrics.finished.labels(state="done").inc()
            logger.info("PACS job %s: SEG %s stored (attempt %d)", job_id, seg_uid, attempts)
            self._cleanup(job_id)
            return self.store.get(job_id)  # type: ignore[return-value]
        code = _error_code(exc)
        message = str(exc) or type(exc).__name__
        self.store.update(job_id, attempts=attempts, first_attempt_at=first)
        if is_transient(exc):
            at = self.backoff.next_attempt_at(
                first_attempt_at=first, now=now, attempt=attempts, retry_after_s=getattr(exc, "retry_after_s", None)
            )
            if at is not None:
                logger.warning(
                    "PACS job %s: storing SEG %s failed (attempt %d, %s); retry in %.1f s",
                    job_id,
                    seg_uid,
                    attempts,
                    code,
                    at - now,
                )
                return self.store.update(  # type: ignore[return-value]
                    job_id, state=JobState.RETRYING, next_attempt_at=at, error_code=code, error=message
                )
            message = f"{message} (gave up after {attempts} attempts, MSDN_PACS_JOB_DEADLINE_S)"
        self._finish_failed(job, code, message)
        return self.store.get(job_id)  # type: ignore[return-value]

    def _finish_failed(self, job: Job, code: str, message: str) -> None:
        current = self.store.update(job.id, state=JobState.FAILED, error_code=code, error=message)
        self.metrics.finished.labels(state="failed").inc()
        self.metrics.failures.labels(code=code).inc()
        kept = current is not None and current.result_path and Path(current.result_path).exists()
        if kept:
            logger.error(
                "PACS job %s failed (%s): %s; SEG %s kept at %s",
                job.id,
                code,
                message,
                current.info.get("seg_sop_instance_uid"),
                current.result_path,
            )
        else:
            logger.error("PACS job %s failed (%s): %s", job.id, code, message)

    def _cleanup(self, job_id: str) -> None:
        """A delivered job keeps only its record (instances and the SEG are on the PACS)."""
        remove_tree(self.store.job_dir(job_id))
        self.store.update(job_id, result_path=None)

    # --- views -------------------------------------------------------------------------------

    def view(self, job: Job) -> dict[str, Any]:
        """The API view of a job (no paths, no patient data)."""
        dropped = self.store.items(job.id, state="dropped")
        return {
            "id": job.id,
            "kind": job.kind,
            "state": job.state.value,
            "attempts": job.attempts,
            "error": {"code": job.error_code, "message": job.error} if job.error_code else None,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "next_attempt_at": job.next_attempt_at if job.state == JobState.RETRYING else None,
            "study_uid": job.info.get("study_uid"),
            "series_uid": job.info.get("series_uid"),
            "calling_ae": job.info.get("calling_ae"),
            "instances": self.store.count_items(job.id, state="ok")
            if job.kind == KIND_PUSH
            else job.info.get("instances"),
            "dropped": [
                {"sop_instance_uid": d.key, "code": d.info.get("code"), "reason": d.info.get("reason")} for d in dropped
            ],
            "seg_sop_instance_uid": job.info.get("seg_sop_instance_uid"),
            "seg_series_uid": job.info.get("seg_series_uid"),
            "result_kept": bool(job.result_path) and job.state != JobState.DONE,
        }
