"""Fixtures of the service tests: real ONNX threshold models, settings, apps and clients."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from service.main import create_app
from tests.service.helpers import CLIP_2C, THRESHOLD_HU, THRESHOLDS_2C, make_settings
from tests.service.pacs.orthanc_server import OrthancServer, free_port, require_orthanc
from tests.support.onnx_models import threshold_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model_1c(model_dir: Path) -> Path:
    """One class (label 1 above 0 HU), 32x32 patches, with a sidecar card carrying its SHA-256."""
    path = model_dir / "threshold1.onnx"
    threshold_model(path, thresholds_hu=(THRESHOLD_HU,), classes=["tissue"], std=100.0, sidecar=True)
    return path


@pytest.fixture(scope="session")
def model_2c(model_dir: Path) -> Path:
    """Two classes: 1 = 'soft' (0..300 HU], 2 = 'dense' (> 300 HU); clip [-1000, 1000]."""
    path = model_dir / "threshold2.onnx"
    threshold_model(path, thresholds_hu=THRESHOLDS_2C, classes=["soft", "dense"], mean=-200.0, std=300.0, clip=CLIP_2C)
    return path


@pytest.fixture(scope="session")
def model_det(model_dir: Path) -> Path:
    """One class above 0 HU plus grid-cell proposals of 8 x 8 pixels."""
    path = model_dir / "threshold_det.onnx"
    threshold_model(path, thresholds_hu=(THRESHOLD_HU,), classes=["tissue"], std=100.0, detection_cell=8)
    return path


@pytest.fixture(scope="session")
def model_det_calibrated(model_dir: Path) -> Path:
    """``model_det`` whose card carries a calibrated proposal threshold of 0.9 (``msdn calibrate``)."""
    path = model_dir / "threshold_det_calibrated.onnx"
    threshold_model(
        path, thresholds_hu=(THRESHOLD_HU,), classes=["tissue"], std=100.0, detection_cell=8, score_threshold=0.9
    )
    return path


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """``make_client(model, **settings)``: a started TestClient (lifespan run), closed at teardown."""
    opened: list[TestClient] = []

    def factory(model: Path, **overrides) -> TestClient:
        client = TestClient(create_app(make_settings(model, **overrides), routers=[]))
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client, model_1c: Path) -> TestClient:
    return make_client(model_1c)


# --- a real Orthanc PACS (used by tests/service/pacs and the live-server contract test) ---

#: Our AE title as the PACS knows it (DicomModalities entry "msdn").
OUR_AE = "MSDN"


@dataclass
class TestSeries:
    """A series uploaded to Orthanc, with the original files (the independent path)."""

    name: str
    files: list[Path]

    @property
    def datasets(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(f) for f in self.files]

    @property
    def study_uid(self) -> str:
        return str(pydicom.dcmread(self.files[0], stop_before_pixels=True).StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(pydicom.dcmread(self.files[0], stop_before_pixels=True).SeriesInstanceUID)


def _test_files() -> dict[str, list[Path]]:
    root = Path(get_testdata_file("CT_small.dcm")).parent
    return {
        "ct5": sorted((root / "dicomdirtests" / "98892001" / "CT5N").iterdir()),
        "ct_small": [root / "CT_small.dcm"],
        "mr_small": [root / "MR_small.dcm"],
        "ct_j2k": [root / "693_J2KI.dcm"],  # 512 x 512 CT, JPEG 2000
    }


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> OrthancServer:
    """A running Orthanc on free local ports; knows AE ``MSDN`` at 127.0.0.1:``orthanc.scp_port``."""
    require_orthanc()
    scp_port = free_port()
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"), modalities={"msdn": (OUR_AE, "127.0.0.1", scp_port)})
    server.scp_port = scp_port  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pacs_series(orthanc: OrthancServer) -> dict[str, TestSeries]:
    """pydicom's test series, uploaded to Orthanc through its REST API."""
    series = {}
    for name, files in _test_files().items():
        for path in files:
            answer = orthanc.upload_file(path)
            assert answer["Status"] in ("Success", "AlreadyStored"), answer
        series[name] = TestSeries(name, files)
    return series


@pytest.fixture(autouse=True)
def _private_data_dir(monkeypatch, tmp_path_factory):
    """Every service test gets its own MSDN_DATA_DIR (job records, spool), never the working tree's."""
    monkeypatch.setenv("MSDN_DATA_DIR", str(tmp_path_factory.mktemp("msdn-data")))
