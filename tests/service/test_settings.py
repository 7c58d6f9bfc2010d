"""service.settings: MSDN_* environment parsing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_environment_with_prefix_and_lists(monkeypatch):
    monkeypatch.setenv("MSDN_MODEL_PATH", "/models/x.onnx")
    monkeypatch.setenv("MSDN_API_KEYS", "k1, k2")
    monkeypatch.setenv("MSDN_ALLOWED_MODALITIES", '["ct", "mr"]')
    monkeypatch.setenv("MSDN_MAX_SLICES", "12")
    settings = Settings(_env_file=None)
    assert str(settings.model_path) == "/models/x.onnx"
    assert settings.api_keys == ["k1", "k2"] and settings.auth_enabled
    assert settings.allowed_modalities == ["CT", "MR"]
    assert settings.max_slices == 12
    assert settings.modality_allowed("mr") and not settings.modality_allowed("US")


def test_defaults_are_local_friendly(monkeypatch):
    for key in ("MSDN_API_KEYS", "MSDN_PROVIDERS", "MSDN_ALLOWED_MODALITIES"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings(_env_file=None)
    assert settings.api_keys == [] and not settings.auth_enabled
    assert settings.providers == ["auto"] and settings.host == "127.0.0.1"
    assert Settings(_env_file=None, allowed_modalities=["*"]).modality_allowed(None)


def test_invalid_values_are_refused():
    with pytest.raises(ValidationError):
        Settings(_env_file=None, max_concurrent_inferences=0)
    with pytest.raises(ValidationError):
        Settings(_env_file=None, default_format="gif")


def test_batch_max_pixels(monkeypatch):
    from service.settings import BATCH_MAX_PIXELS

    assert Settings(_env_file=None).batch_max_pixels == BATCH_MAX_PIXELS == 2 * 512 * 512
    monkeypatch.setenv("MSDN_BATCH_MAX_PIXELS", "0")
    assert Settings(_env_file=None).batch_max_pixels == 0
    with pytest.raises(ValidationError):
        Settings(_env_file=None, batch_max_pixels=-1)


def test_malloc_mmap_threshold():
    assert Settings(_env_file=None).malloc_mmap_threshold == 0  # glibc's own unless set
    assert Settings(_env_file=None, malloc_mmap_threshold=131072).malloc_mmap_threshold == 131072
    for bad in (-1, 32 * 1024 * 1024 + 1):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, malloc_mmap_threshold=bad)


def test_intra_op_spinning_is_off_by_default(monkeypatch):
    assert Settings(_env_file=None).intra_op_spinning is False
    monkeypatch.setenv("MSDN_INTRA_OP_SPINNING", "true")
    assert Settings(_env_file=None).intra_op_spinning is True
