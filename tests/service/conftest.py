"""Fixtures of the service tests: real ONNX threshold models, settings, apps and clients."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.helpers import CLIP_2C, THRESHOLD_HU, THRESHOLDS_2C, make_settings
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
    threshold_model(
        path, thresholds_hu=THRESHOLDS_2C, classes=["soft", "dense"], mean=-200.0, std=300.0, clip=CLIP_2C
    )
    return path


@pytest.fixture(scope="session")
def model_det(model_dir: Path) -> Path:
    """One class above 0 HU plus grid-cell proposals of 8 x 8 pixels."""
    path = model_dir / "threshold_det.onnx"
    threshold_model(path, thresholds_hu=(THRESHOLD_HU,), classes=["tissue"], std=100.0, detection_cell=8)
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
