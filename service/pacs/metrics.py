"""Prometheus metrics of the PACS jobs (registered in the app's registry, so ``GET /metrics`` has them).

* ``msdn_pacs_jobs{state}``: jobs per state now (read from the job store at scrape time);
* ``msdn_pacs_jobs_finished_total{state}``: jobs ended ``done`` / ``failed``;
* ``msdn_pacs_job_failures_total{code}``: failed jobs by error code;
* ``msdn_pacs_job_retries_total``: store attempts after the first;
* ``msdn_pacs_instances_received_total`` / ``msdn_pacs_instances_refused_total{code}`` /
  ``msdn_pacs_instances_duplicate_total``: C-STORE intake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from service.jobs.store import JobStore


class _JobStates:
    def __init__(self, store: "JobStore", kinds: tuple[str, ...]) -> None:
        self.store = store
        self.kinds = kinds

    def collect(self):
        family = GaugeMetricFamily("msdn_pacs_jobs", "PACS jobs per state", labels=["state"])
        try:
            counts = self.store.count_by_state(kinds=self.kinds)
        except Exception:  # noqa: BLE001 - a closed store at shutdown: no sample
            counts = {}
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
        yield family

    def describe(self):
        return []


class PacsJobMetrics:
    """The families above, in ``registry`` (a private one when None)."""

    def __init__(self, registry: Optional[CollectorRegistry], store: "JobStore", kinds: tuple[str, ...] = ()) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.finished = Counter("msdn_pacs_jobs_finished", "PACS jobs ended", ["state"], registry=r)
        self.failures = Counter("msdn_pacs_job_failures", "failed PACS jobs by error code", ["code"], registry=r)
        self.retries = Counter("msdn_pacs_job_retries", "PACS store attempts after the first", registry=r)
        self.received = Counter("msdn_pacs_instances_received", "instances accepted by the push listener", registry=r)
        self.refused = Counter("msdn_pacs_instances_refused", "instances refused at C-STORE", ["code"], registry=r)
        self.duplicates = Counter(
            "msdn_pacs_instances_duplicate", "instances received again (same SOP UID)", registry=r
        )
        self._states = _JobStates(store, kinds)
        r.register(self._states)

    def unregister(self) -> None:
        for collector in (
            self.finished,
            self.failures,
            self.retries,
            self.received,
            self.refused,
            self.duplicates,
            self._states,
        ):
            try:
                self.registry.unregister(collector)
            except KeyError:
                pass
