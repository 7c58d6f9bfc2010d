"""service.io.upload: zip expansion and its safety checks."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from service.errors import InvalidInput, LimitExceeded, UnsafeZip
from service.io.spool import PartFile
from service.io.upload import expand_files, zip_members
from tests.service.helpers import make_settings


@pytest.fixture
def settings(model_1c):
    return make_settings(model_1c)


def _zip(entries: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    buffer.seek(0)
    return buffer


def test_members_are_read_and_junk_skipped(settings):
    data = _zip(
        {
            "series/a.dcm": b"A",
            "series/b.dcm": b"BB",
            "DICOMDIR": b"x",
            "__MACOSX/._a.dcm": b"y",
            ".DS_Store": b"z",
        }
    )
    assert list(zip_members(data, name="up.zip", settings=settings)) == [
        ("series/a.dcm", b"A"),
        ("series/b.dcm", b"BB"),
    ]


def test_expand_keeps_plain_files_and_opens_zips(settings):
    plain = io.BytesIO(b"\x00" * 132)
    files = expand_files([("one.dcm", plain), ("s.zip", _zip({"x.dcm": b"X"}))], settings=settings)
    assert [name for name, _ in files] == ["one.dcm", "s.zip/x.dcm"]
    assert files[1][1].read() == b"X"


@pytest.mark.parametrize("member", ["../evil.dcm", "a/../../evil.dcm", "/etc/passwd", "..\\evil.dcm", "C:/x.dcm"])
def test_path_traversal_is_refused(settings, member):
    with pytest.raises(UnsafeZip) as err:
        list(zip_members(_zip({"ok.dcm": b"1", member: b"2"}), name="up.zip", settings=settings))
    assert err.value.code == "zip_path_traversal"
    assert repr(member) in err.value.message


def test_symlink_member_is_refused(settings):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    buffer.seek(0)
    with pytest.raises(UnsafeZip) as err:
        list(zip_members(buffer, name="up.zip", settings=settings))
    assert err.value.code == "zip_symlink"


def test_compression_ratio_limit(settings):
    bomb = _zip({"zeros.dcm": b"\x00" * (4 << 20)})  # 4 MiB of zeros deflate ~1000-fold
    with pytest.raises(LimitExceeded) as err:
        list(zip_members(bomb, name="bomb.zip", settings=settings))
    assert err.value.code == "zip_ratio"
    bomb.seek(0)
    relaxed = settings.model_copy(update={"max_zip_ratio": 10_000.0})
    assert len(next(zip_members(bomb, name="bomb.zip", settings=relaxed))[1]) == 4 << 20


def test_uncompressed_size_limit(settings):
    data = _zip({"a.dcm": b"1" * 600, "b.dcm": b"2" * 600}, compression=zipfile.ZIP_STORED)
    small = settings.model_copy(update={"max_zip_uncompressed_bytes": 1000})
    with pytest.raises(LimitExceeded) as err:
        list(zip_members(data, name="big.zip", settings=small))
    assert err.value.code == "zip_too_large"


def test_file_count_limit(settings):
    data = _zip({f"{i}.dcm": b"x" for i in range(5)})
    with pytest.raises(LimitExceeded) as err:
        expand_files([("many.zip", data)], settings=settings.model_copy(update={"max_files": 4}))
    assert err.value.code == "too_many_files"


def test_corrupt_zip(settings):
    data = _zip({"a.dcm": b"hello" * 100})
    raw = bytearray(data.getvalue())
    raw[40:60] = b"\xff" * 20  # damage the compressed stream
    with pytest.raises(InvalidInput) as err:
        list(zip_members(io.BytesIO(bytes(raw)), name="bad.zip", settings=settings))
    assert err.value.code == "invalid_zip"
    with pytest.raises(InvalidInput) as err:
        list(zip_members(io.BytesIO(b"PK\x03\x04garbage"), name="bad.zip", settings=settings))
    assert err.value.code == "invalid_zip"


def test_many_one_mib_members_of_zeros_are_a_bomb(settings):
    """The measured attack: 1.1 MB of zip, 1000 members of 1 MiB zeros (each ~1000-fold)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(50):
            zf.writestr(f"m{i}.dcm", b"\0" * (1 << 20))
    buffer.seek(0)
    with pytest.raises(LimitExceeded) as err:
        expand_files([("bomb.zip", buffer)], settings=settings)
    assert err.value.code == "zip_ratio"


def test_limits_count_all_zips_of_a_request(settings):
    small = settings.model_copy(update={"max_zip_uncompressed_bytes": 3000, "max_zip_ratio": 1e6})
    one = _zip({"a.dcm": b"a" * 2000})
    two = _zip({"b.dcm": b"b" * 2000})
    assert len(expand_files([("one.zip", _zip({"a.dcm": b"a" * 2000}))], settings=small)) == 1
    with pytest.raises(LimitExceeded) as err:
        expand_files([("one.zip", one), ("two.zip", two)], settings=small)
    assert err.value.code == "zip_too_large"
    few = settings.model_copy(update={"max_files": 3})
    with pytest.raises(LimitExceeded) as err:
        expand_files(
            [("one.zip", _zip({"a": b"1", "b": b"2"})), ("two.zip", _zip({"c": b"3", "d": b"4"}))], settings=few
        )
    assert err.value.code == "too_many_files"


def test_members_are_spooled_not_held_in_memory(settings):
    import tracemalloc

    rng = __import__("numpy").random.default_rng(0)
    big = rng.integers(0, 256, 8 << 20, dtype="uint8").tobytes()  # incompressible
    archive = _zip({"big.dcm": big, "small.dcm": b"x", "other.dcm": big[:1000]})
    tracemalloc.start()
    try:
        files = expand_files([("s.zip", archive)], settings=settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # 8 MiB expanded, a few 64 KiB chunks at a time in memory
    (_, big_fh), (_, small_fh), (_, other_fh) = files
    assert all(isinstance(fh, PartFile) for _, fh in files)
    assert big_fh.read() == big and small_fh.read() == b"x"
    assert other_fh.read(10) == big[:10] and other_fh.seek(0, 2) == 1000 and other_fh.read() == b""
    for _, fh in files:
        fh.close()
