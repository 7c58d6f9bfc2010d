"""The durable job store: records survive a reopen (a restart), state changes are compare-and-set."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from service.jobs.files import write_durable
from service.jobs.store import JobState, JobStore


def test_records_survive_a_killed_process(tmp_path):
    # A separate process writes a job and an item, then dies by SIGKILL without closing anything.
    code = textwrap.dedent(
        f"""
        import os, signal
        from service.jobs.store import JobStore
        store = JobStore({str(tmp_path)!r})
        job, _ = store.create("k", key="series-1", state="receiving", info={{"series_uid": "1.2"}})
        store.add_item(job.id, "1.2.3")
        store.update(job.id, attempts=2, error_code="pacs_unavailable", error="down")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()}, check=False)
    assert proc.returncode == -9
    store = JobStore(tmp_path)
    job = store.find("series-1")
    assert job is not None
    assert (job.kind, job.state, job.attempts, job.error_code) == ("k", JobState.RECEIVING, 2, "pacs_unavailable")
    assert job.info == {"series_uid": "1.2"}
    assert [i.key for i in store.items(job.id)] == ["1.2.3"]


def test_create_with_a_key_is_idempotent(tmp_path):
    store = JobStore(tmp_path)
    first, created = store.create("k", key="a")
    again, created_again = store.create("k", key="a")
    assert created and not created_again and again.id == first.id
    assert store.create("k")[0].id != first.id  # no key: always new


def test_transition_is_compare_and_set(tmp_path):
    store = JobStore(tmp_path)
    job, _ = store.create("k", state="queued")
    winners = []

    def claim():
        if store.transition(job.id, [JobState.QUEUED], JobState.RUNNING) is not None:
            winners.append(threading.get_ident())

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert store.get(job.id).state == JobState.RUNNING


def test_due_lists_queued_and_retries_whose_time_came(tmp_path):
    store = JobStore(tmp_path)
    queued, _ = store.create("k", state="queued")
    later, _ = store.create("k", state="retrying")
    store.update(later.id, next_attempt_at=2000.0)
    now_due, _ = store.create("k", state="retrying")
    store.update(now_due.id, next_attempt_at=500.0)
    store.create("other", state="queued")
    store.create("k", state="done")
    assert {j.id for j in store.due(kinds=["k"], now=1000.0)} == {queued.id, now_due.id}


def test_info_is_merged_and_items_kept_once(tmp_path):
    store = JobStore(tmp_path)
    job, _ = store.create("k", info={"a": 1})
    store.update(job.id, info={"b": 2})
    assert store.get(job.id).info == {"a": 1, "b": 2}
    assert store.add_item(job.id, "x") is True
    assert store.add_item(job.id, "x") is False
    store.set_item(job.id, "y", state="dropped", info={"code": "not_dicom"})
    assert store.count_items(job.id, state="ok") == 1
    assert store.item(job.id, "y").info == {"code": "not_dicom"}
    counts = store.count_by_state(kinds=["k"])
    assert counts["queued"] == 1 and counts["done"] == 0


def test_unknown_fields_are_refused(tmp_path):
    store = JobStore(tmp_path)
    job, _ = store.create("k")
    with pytest.raises(ValueError, match="fields must be among"):
        store.update(job.id, colour="red")


def test_write_durable_replaces_atomically(tmp_path):
    path = tmp_path / "a" / "b.dcm"
    write_durable(path, b"one")
    write_durable(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["b.dcm"]  # no temp file left
