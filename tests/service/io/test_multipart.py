"""service.io.multipart: the spooling multipart parser against Starlette's own, limits, memory."""

from __future__ import annotations

import asyncio
import os
import tracemalloc

import httpx
import numpy as np
import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.io.multipart import parse_multipart


def _encode(files, data=None, *, boundary: bytes | None = None) -> tuple[bytes, Headers]:
    """A multipart body and its headers, by httpx's encoder (an independent implementation)."""
    request = httpx.Request("POST", "http://x/", files=files, data=data or {})
    body, content_type = request.read(), request.headers["content-type"]
    if boundary is not None:
        old = content_type.split("boundary=")[1].encode()
        body = body.replace(old, boundary)
        content_type = f"multipart/form-data; boundary={boundary.decode()}"
    return body, Headers(raw=[(b"content-type", content_type.encode())])


def _chunks(body: bytes, sizes):
    async def stream():
        at, i = 0, 0
        while at < len(body):
            size = sizes[i % len(sizes)]
            yield body[at : at + size]
            at, i = at + size, i + 1

    return stream()


def _ours(body: bytes, headers: Headers, sizes=(65536,), **limits):
    return asyncio.run(parse_multipart(headers, _chunks(body, sizes), **limits))


def _starlettes(body: bytes, headers: Headers, **limits):
    return asyncio.run(MultiPartParser(headers, _chunks(body, [65536]), **limits).parse())


async def _read_all(form) -> list[tuple[str, str | tuple]]:
    out = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            await value.seek(0)
            out.append((key, (value.filename, value.content_type, value.size, await value.read())))
        else:
            out.append((key, value))
    return out


def _as_items(form):
    return asyncio.run(_read_all(form))


def _binary(n: int, seed: int) -> bytes:
    """Bytes rich in CR, LF and dashes, where a sloppy boundary search would go wrong."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.frombuffer(b"\r\n-ab\x00\xff", np.uint8), n).tobytes()


FILES = [
    ("dicom", ("a.dcm", _binary(70_000, 1), "application/dicom")),
    ("dicom", ("b.dcm", _binary(5, 2), "application/dicom")),
    ("dicom", ("empty.dcm", b"", "application/octet-stream")),
    ("volume", ("h\u00e9llo w\u00f6rld.nii", b"\r\n--\r\n", "application/gzip")),
]
DATA = {"mode": "slices", "boxes": '[{"slice": 0, "box": [1, 2, 3, 4]}]', "empty": "", "name": "\u00e9t\u00e9"}


@pytest.mark.parametrize("sizes", [(65536,), (1,), (7, 3, 1), (71,), (1 << 20,)])
def test_same_form_as_starlettes_parser_for_any_chunking(sizes):
    body, headers = _encode(FILES, DATA)
    expected = _as_items(_starlettes(body, headers))
    got = _as_items(_ours(body, headers, sizes))
    assert got == expected
    assert [k for k, _ in got] == ["mode", "boxes", "empty", "name", "dicom", "dicom", "dicom", "volume"]
    assert got[4][1][3] == FILES[0][1][1] and got[6][1][2] == 0


def test_delimiter_straddling_every_chunk_offset():
    """A body cut at every offset around each boundary: each cut position gives the same form."""
    body, headers = _encode([("f", ("x.bin", b"\r\n-" * 40, "application/octet-stream"))], {"a": "1"})
    expected = _as_items(_starlettes(body, headers))
    for first in range(1, 120):
        assert _as_items(_ours(body, headers, (first, 13))) == expected, first


def test_preamble_epilogue_padding_and_a_boundary_with_dashes():
    boundary = b"--==x'()+_,-./:=?y"
    part = b'Content-Disposition: form-data; name="f"; filename="f.bin"\r\n\r\n'
    body = (
        b"this preamble is ignored\r\n"
        + b"--" + boundary + b" \t\r\n" + part + b"--abc\r\n--"
        + b"\r\n--" + boundary + b"\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\nv"
        + b"\r\n--" + boundary + b"--\r\nepilogue \r\n--" + boundary + b"\r\n"
    )  # fmt: skip
    headers = Headers(raw=[(b"content-type", b'multipart/form-data; boundary="' + boundary + b'"')])
    assert _as_items(_ours(body, headers, (5,))) == [
        ("f", ("f.bin", None, 9, b"--abc\r\n--")),
        ("k", "v"),
    ]


def test_a_part_without_headers_or_name_is_refused():
    body = b"--b\r\n\r\ndata\r\n--b--\r\n"
    headers = Headers(raw=[(b"content-type", b"multipart/form-data; boundary=b")])
    with pytest.raises(MultiPartException, match='"name" must be provided'):
        _ours(body, headers)


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n', b"boundary=b", "closing boundary"),
        (b'--b\r\nContent-Disposition: form-data; name="a"\r\n', b"boundary=b", "headers without an end"),
        (b"--bX\r\n\r\n", b"boundary=b", "no CRLF after a boundary"),
        (b"--b\r\nno colon here\r\n\r\n1\r\n--b--", b"boundary=b", "header line without a name"),
        (b"anything", b"charset=utf-8", "Missing boundary"),
        (b"", b"boundary=b", "closing boundary"),
    ],
)
def test_malformed_bodies_are_refused(body, content_type, message):
    headers = Headers(raw=[(b"content-type", b"multipart/form-data; " + content_type)])
    with pytest.raises(MultiPartException, match=message):
        _ours(body, headers)


def test_limits_as_starlettes():
    body, headers = _encode(FILES, DATA)
    for limits, message in [
        ({"max_files": 3}, "Too many files. Maximum number of files is 3."),
        ({"max_fields": 2}, "Too many fields. Maximum number of fields is 2."),
        ({"max_part_size": 20}, "Part exceeded maximum size of 0KB."),
    ]:
        with pytest.raises(MultiPartException) as theirs:
            _starlettes(body, headers, **limits)
        with pytest.raises(MultiPartException) as ours:
            _ours(body, headers, **limits)
        assert ours.value.message == theirs.value.message == message
    assert len(_ours(body, headers, max_files=4, max_fields=4, max_part_size=64).getlist("dicom")) == 3


def test_the_spool_is_an_unlinked_file_closed_with_the_last_part(tmp_path):
    body, headers = _encode(FILES, DATA)
    form = asyncio.run(parse_multipart(headers, _chunks(body, [4096]), spool_dir=str(tmp_path)))
    assert os.listdir(tmp_path) == []  # unlinked at creation: nothing left if the process dies
    parts = form.getlist("dicom")
    fd = parts[0].file._reader.raw._spool.fd
    os.fstat(fd)  # open
    asyncio.run(form.close())
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_refused_body_leaves_no_open_spool():
    body, headers = _encode(FILES, DATA)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(MultiPartException):
        _ours(body, headers, max_files=1)
    with pytest.raises(MultiPartException):
        _ours(body[:-10], headers)
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_body_is_not_held_in_memory():
    """20 parts of 512 KiB (a DICOM series' slices): Starlette keeps them all in memory, we don't."""
    files = [("dicom", (f"{i}.dcm", os.urandom(512 * 1024), "application/dicom")) for i in range(20)]
    body, headers = _encode(files)
    del files

    def traced_peak(parse) -> int:
        tracemalloc.start()
        try:
            form = parse()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        asyncio.run(form.close())
        return peak

    theirs = traced_peak(lambda: _starlettes(body, headers))
    ours = traced_peak(lambda: _ours(body, headers))
    assert theirs > 10 * 2**20  # the control: every part in memory
    assert ours < 2 * 2**20  # a few chunks at a time (and the event loop's own)


def test_part_headers_over_the_limit_are_refused():
    from service.io.multipart import MAX_PART_HEADER_BYTES

    long = b"X-Pad: " + b"a" * MAX_PART_HEADER_BYTES + b"\r\n"
    body = b'--b\r\nContent-Disposition: form-data; name="a"\r\n' + long + b"\r\n1\r\n--b--\r\n"
    headers = Headers(raw=[(b"content-type", b"multipart/form-data; boundary=b")])
    with pytest.raises(MultiPartException, match=f"part headers over {MAX_PART_HEADER_BYTES} bytes"):
        _ours(body, headers)
