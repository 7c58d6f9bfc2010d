"""Soak test: 8 clients for a bounded time through ``POST /segment`` and the push listener, with the
PACS failing for real, and a count of lost results.

Run from the repository root (Orthanc installed; see scripts/install_orthanc.sh):

    PYTHONPATH=. python benchmarks/soak.py                    # 60 s, 8 clients (4 HTTP, 4 DICOM push)
    PYTHONPATH=. python benchmarks/soak.py --duration 600 --clients 8

A real ``msdn serve`` process (a threshold ONNX model, CPU, one intra-op thread) runs the push
listener; it stores SEGs over DICOMweb through a proxy in front of a real Orthanc that answers every
third STOW-RS request 503 (Retry-After: 1) and, from a third of the run on, stops answering
anything but 503 for ``--outage`` seconds. HTTP clients post 6-slice CT series (every fifth with a
truncated slice: 422 expected); push clients C-STORE fresh 6-slice series (every fifth with a
truncated instance: refused at C-STORE, the rest segmented). After the run the jobs get ``--drain``
seconds to finish. Printed: requests and status codes per kind, p50 / p99 latency, the server's RSS
over time, and ``results lost: N`` = pushed series whose SEG is not on the PACS (target 0).
"""

from __future__ import annotations

import argparse
import collections
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE  # noqa: E402

from tests.service.pacs.fault_proxy import FaultProxy  # noqa: E402
from tests.service.pacs.orthanc_server import OrthancServer  # noqa: E402
from tests.support.dicom_series import ct_series, series_files  # noqa: E402
from tests.support.live_server import free_port, start_server, stop_server  # noqa: E402
from tests.support.onnx_models import threshold_model  # noqa: E402

PUSH_AE = "SOAKPUSH"


def a_series(seed: int, corrupt: bool):
    rng = np.random.default_rng(seed)
    hu = rng.normal(0, 200, (6, 64, 64)).clip(-1000, 1000)
    datasets = ct_series(hu)
    if corrupt:
        datasets[-1].PixelData = datasets[-1].PixelData[:-100]
    return datasets


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.pushed: list[tuple[str, str, int]] = []  # (study uid, series uid, good instances)

    def add(self, kind: str, code: str, seconds: float) -> None:
        with self.lock:
            self.codes[kind][code] += 1
            self.latency[kind].append(seconds)


def http_client(url: str, stop: threading.Event, stats: Stats, seed: int) -> None:
    n = 0
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            n += 1
            files = [
                ("dicom", (name, data, "application/dicom"))
                for name, data in series_files(a_series(seed * 1000 + n, n % 5 == 0))
            ]
            start = time.perf_counter()
            try:
                code = str(client.post(f"{url}/segment", files=files).status_code)
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            stats.add("POST /segment", code, time.perf_counter() - start)


def push_client(port: int, stop: threading.Event, stats: Stats, seed: int) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        datasets = a_series(10**6 + seed * 1000 + n, n % 5 == 0)
        ae = AE(ae_title=PUSH_AE)
        ae.add_requested_context(datasets[0].SOPClassUID, ExplicitVRLittleEndian)
        start = time.perf_counter()
        assoc = ae.associate("127.0.0.1", port, ae_title="MSDN")
        if not assoc.is_established:
            stats.add("C-STORE series", "association refused", time.perf_counter() - start)
            time.sleep(1)
            continue
        statuses = []
        for ds in datasets:
            if not assoc.is_established:  # aborted (a modality would send the rest again)
                statuses.append(-1)
                continue
            statuses.append(int(assoc.send_c_store(ds).get("Status", -1)))
        if assoc.is_established:
            assoc.release()
        good = sum(1 for s in statuses if s == 0)
        codes = sorted({f"0x{s:04X}" if s >= 0 else "aborted" for s in statuses})
        stats.add("C-STORE series", "+".join(codes), time.perf_counter() - start)
        if good:
            with stats.lock:
                stats.pushed.append((str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID), good))
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=8, help="clients, half HTTP and half DICOM push")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds the PACS answers only 503")
    parser.add_argument("--drain", type=float, default=120.0, help="seconds the jobs get to finish after the load")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="msdn-soak-"))
    scp_port, port = free_port(), free_port()
    orthanc = OrthancServer(work / "orthanc", modalities={"msdn": ("MSDN", "127.0.0.1", scp_port)}).start()
    proxy = FaultProxy(orthanc.url).start()
    proxy.fail("POST", "/dicom-web/studies", times=-1, every=3, retry_after="1")
    model = work / "threshold.onnx"
    threshold_model(model, thresholds_hu=(0.0,), classes=["tissue"], std=100.0, sidecar=True)
    env = {
        "MSDN_MODEL_PATH": str(model),
        "MSDN_INTRA_OP_THREADS": "1",
        "MSDN_DATA_DIR": str(work / "data"),
        "MSDN_PACS_PROTOCOL": "dicomweb",
        "MSDN_PACS_DICOMWEB_URL": f"{proxy.url}/dicom-web",
        "MSDN_PACS_DICOMWEB_AUTH": "basic",
        "MSDN_PACS_DICOMWEB_USERNAME": orthanc.username,
        "MSDN_PACS_DICOMWEB_PASSWORD": orthanc.password,
        "MSDN_PACS_AE_TITLE": "MSDN",
        "MSDN_PACS_STORAGE_HOST": "127.0.0.1",
        "MSDN_PACS_STORAGE_PORT": str(scp_port),
        "MSDN_PACS_LISTENER_ENABLED": "true",
        "MSDN_PACS_LISTENER_SERIES_IDLE_S": "1",
        "MSDN_PACS_LISTENER_ALLOWED_AES": PUSH_AE,
        "MSDN_PACS_LISTENER_MAX_PENDING_SERIES": "64",
        "MSDN_PACS_JOB_RETRY_INITIAL_S": "0.5",
        "MSDN_PACS_JOB_RETRY_MAX_S": "4",
    }
    args_serve = [sys.executable, "-c", "from model_export.cli import main; raise SystemExit(main())", "serve"]
    server = start_server(args_serve + ["--port", str(port)], env, port, work / "server.log")
    url = f"http://127.0.0.1:{port}"
    stats = Stats()
    stop = threading.Event()
    rss: list[tuple[float, int]] = [(0.0, rss_kib(server.pid))]
    http_n = args.clients // 2
    threads = [threading.Thread(target=http_client, args=(url, stop, stats, i)) for i in range(http_n)]
    threads += [
        threading.Thread(target=push_client, args=(scp_port, stop, stats, i)) for i in range(args.clients - http_n)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    outage_at, outage_done = args.duration / 3, False
    while (elapsed := time.monotonic() - started) < args.duration:
        time.sleep(min(5.0, args.duration - elapsed))
        rss.append((time.monotonic() - started, rss_kib(server.pid)))
        if not outage_done and time.monotonic() - started >= outage_at:
            proxy.fail("*", "/dicom-web/", times=10**9, retry_after="2")  # the PACS answers only 503 now
            outage_rule = proxy.rules[-1]
            threading.Timer(args.outage, lambda rule=outage_rule: setattr(rule, "times", 0)).start()
            outage_done = True
    stop.set()
    for thread in threads:
        thread.join(180)
    load_s = time.monotonic() - started

    # Drain: every pushed series with accepted instances must end with its SEG on the PACS.
    deadline = time.monotonic() + args.drain
    while time.monotonic() < deadline:
        counts = httpx.get(f"{url}/v1/pacs/jobs", params={"limit": 1}, timeout=30).json()["counts"]
        if counts["receiving"] + counts["queued"] + counts["running"] + counts["retrying"] == 0:
            break
        time.sleep(2)
    rss.append((time.monotonic() - started, rss_kib(server.pid)))
    jobs = httpx.get(f"{url}/v1/pacs/jobs", params={"limit": 1000, "kind": "pacs-push"}, timeout=30).json()
    stop_server(server)
    lost = []
    for study_uid, series_uid, good in stats.pushed:
        # Lost unless exactly one SEG series is on the PACS and it references every accepted instance.
        segs = orthanc.find("Series", {"StudyInstanceUID": study_uid, "Modality": "SEG"})
        referenced = 0
        if len(segs) == 1:
            (seg_file,) = [
                orthanc.instance_file(i["ID"])
                for i in orthanc.rest.get(f"{orthanc.url}/series/{segs[0]}/instances").json()
            ]
            seg = pydicom.dcmread(io.BytesIO(seg_file))
            referenced = sum(len(s.ReferencedInstanceSequence) for s in seg.ReferencedSeriesSequence)
        if referenced != good:
            lost.append(series_uid)
    proxy.stop()
    orthanc.stop()

    print(f"soak: {args.clients} clients for {load_s:.0f} s, PACS outage {args.outage:g} s, every 3rd STOW-RS 503")
    print()
    print(f"{'requests':<18} {'n':>6} {'p50 s':>8} {'p99 s':>8}  status codes")
    for kind in sorted(stats.codes):
        lat = stats.latency[kind]
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(stats.codes[kind].items()))
        print(f"{kind:<18} {len(lat):>6} {statistics.median(lat):>8.3f} {percentile(lat, 0.99):>8.3f}  {codes}")
    print()
    print("server RSS over time")
    print(f"{'t s':>6} {'RSS MiB':>8}")
    for t, kib in rss:
        print(f"{t:>6.0f} {kib / 1024:>8.1f}")
    print()
    print(f"jobs: {jobs['counts']}")
    retries = sum(j["attempts"] - 1 for j in jobs["jobs"] if j["attempts"] > 1)
    dropped = sum(len(j["dropped"]) for j in jobs["jobs"])
    print(f"pushed series: {len(stats.pushed)}, store retries: {retries}, instances refused at C-STORE: {dropped}")
    print(f"results lost: {len(lost)}")
    return 0 if not lost else 1


if __name__ == "__main__":
    raise SystemExit(main())
