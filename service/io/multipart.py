"""A ``multipart/form-data`` parser that writes the whole body to one temporary file as it arrives.

Starlette's parser (python-multipart's state machine) keeps every file part under 1 MiB in memory,
each in its own ``SpooledTemporaryFile``: a DICOM series of 300 slices of 512 x 512 is 300 parts of
512 KiB, 150 MiB of the process's memory for as long as the request lasts, copied once more as each
part is written. :func:`parse_multipart` instead appends each received chunk to one
:class:`~service.io.spool.Spool` (an unlinked temporary file) and finds the boundaries with
``bytes.find`` while it does (C-level search, on the chunk and on the few bytes that straddle two
chunks). Once the body is complete, the headers of each part are read back from the file and every
file part becomes an :class:`UploadFile` over its byte range of the spool
(:class:`~service.io.spool.PartFile`). The body's pages stay in the page cache, not in the process:
what a request holds in memory is what it decodes.

The grammar is RFC 2046 section 5.1.1 as RFC 7578 uses it: an optional preamble, ``--boundary``
with optional transport padding and CRLF, part headers up to an empty line, the part's bytes up to
``CRLF--boundary``, and the close delimiter ``--boundary--``. Malformed bodies (no boundary, no close
delimiter, a part without ``name``, headers over :data:`MAX_PART_HEADER_BYTES`) and the limits
(``max_files``, ``max_fields``, ``max_part_size`` for fields) raise Starlette's
``MultiPartException``, which the route answers with 400 like Starlette's own parser.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Optional

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException

from service.io.spool import PartFile, Spool

#: Largest header block of one part (its Content-Disposition, Content-Type...).
MAX_PART_HEADER_BYTES = 16 * 1024


@dataclass
class _Scanner:
    """Finds every ``CRLF--boundary`` of a body given chunk by chunk (offsets in the body's bytes).

    The body is scanned as if it began with CRLF, so a first delimiter at offset 0 (no preamble)
    is found too, at offset -2. Boundaries hold no CR or LF (RFC 2046), so two delimiters never
    overlap.
    """

    delimiter: bytes
    tail: bytes = b"\r\n"  # the last len(delimiter) - 1 bytes seen (at most)
    tail_offset: int = -2
    found: list[int] = field(default_factory=list)

    def feed(self, chunk: bytes) -> None:
        d = self.delimiter
        keep = len(d) - 1
        base = self.tail_offset + len(self.tail)  # offset of chunk[0]
        if self.tail:  # delimiters that begin in the previous data and end in this chunk
            joined = self.tail + chunk[:keep]
            at = joined.find(d)
            while at != -1 and at < len(self.tail):
                self.found.append(self.tail_offset + at)
                at = joined.find(d, at + 1)
        at = chunk.find(d)
        while at != -1:
            self.found.append(base + at)
            at = chunk.find(d, at + len(d))
        self.tail = chunk[-keep:] if len(chunk) >= keep else (self.tail + chunk)[-keep:]
        self.tail_offset = base + len(chunk) - len(self.tail)


def _decode(value: bytes, charset: str) -> str:
    try:
        return value.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return value.decode("latin-1")


def _part_headers(block: bytes) -> list[tuple[bytes, bytes]]:
    headers = []
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MultiPartException("Invalid multipart data: a part header line without a name.")
        headers.append((name.strip().lower(), value.strip()))
    return headers


async def parse_multipart(
    headers: Headers,
    stream: AsyncIterator[bytes],
    *,
    max_files: int | float = 1000,
    max_fields: int | float = 1000,
    max_part_size: int = 1024 * 1024,
    spool_dir: Optional[str] = None,
) -> FormData:
    """Parse a ``multipart/form-data`` body, spooling it to one temporary file (module docstring).

    Args:
        headers: the request's headers (``Content-Type`` gives the boundary and charset).
        stream: the body's chunks.
        max_files: most file parts.
        max_fields: most non-file fields.
        max_part_size: largest non-file field in bytes.
        spool_dir: folder of the temporary file (default: ``tempfile``'s, i.e. ``TMPDIR``).

    Returns:
        The fields (``str``) and files (:class:`UploadFile` over :class:`PartFile`) in body order.
        Closing the form closes the files; the spool goes when the last of them is closed.

    Raises:
        MultiPartException: a malformed body or a limit exceeded.
    """
    _, params = parse_options_header(headers.get("Content-Type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultiPartException("Missing boundary in multipart.")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    spool = Spool(dir=spool_dir)
    try:
        scanner = _Scanner(b"\r\n--" + boundary)
        async for chunk in stream:
            if chunk:
                scanner.feed(chunk)
                spool.append(chunk)
        return _form(spool, scanner.found, len(scanner.delimiter), charset, max_files, max_fields, max_part_size)
    finally:
        spool.release()  # the parts hold their own references


def _form(
    spool: Spool,
    delimiters: list[int],
    delimiter_size: int,
    charset: str,
    max_files: int | float,
    max_fields: int | float,
    max_part_size: int,
) -> FormData:
    items: list[tuple[str, str | UploadFile]] = []
    files: list[UploadFile] = []
    fields = 0
    try:
        closed = False
        for i, at in enumerate(delimiters):
            start = at + delimiter_size
            end = delimiters[i + 1] if i + 1 < len(delimiters) else spool.size
            head = spool.pread(min(end - start, MAX_PART_HEADER_BYTES), start)
            if head.startswith(b"--"):
                closed = True
                break
            line_end = head.find(b"\r\n")
            if line_end == -1 or head[:line_end].strip(b" \t"):
                raise MultiPartException("Invalid multipart data: no CRLF after a boundary.")
            if head.startswith(b"\r\n", line_end + 2):
                block, body_start = b"", line_end + 4
            else:
                block_end = head.find(b"\r\n\r\n", line_end + 2)
                if block_end == -1:
                    if len(head) >= MAX_PART_HEADER_BYTES:
                        raise MultiPartException(
                            f"Invalid multipart data: part headers over {MAX_PART_HEADER_BYTES} bytes."
                        )
                    raise MultiPartException("Invalid multipart data: part headers without an end.")
                block, body_start = head[line_end + 2 : block_end], block_end + 4
            raw_headers = _part_headers(block)
            disposition = dict(raw_headers).get(b"content-disposition", b"")
            _, options = parse_options_header(disposition)
            if b"name" not in options:
                raise MultiPartException('The Content-Disposition header field "name" must be provided.')
            name = _decode(options[b"name"], charset)
            data_start, data_end = start + body_start, end
            if b"filename" in options:
                if len(files) >= max_files:
                    raise MultiPartException(f"Too many files. Maximum number of files is {max_files}.")
                upload = UploadFile(
                    file=PartFile(spool, data_start, data_end),
                    size=data_end - data_start,
                    filename=_decode(options[b"filename"], charset),
                    headers=Headers(raw=raw_headers),
                )
                files.append(upload)
                items.append((name, upload))
            else:
                if fields >= max_fields:
                    raise MultiPartException(f"Too many fields. Maximum number of fields is {max_fields}.")
                if data_end - data_start > max_part_size:
                    raise MultiPartException(f"Part exceeded maximum size of {int(max_part_size / 1024)}KB.")
                items.append((name, _decode(spool.pread(data_end - data_start, data_start), charset)))
                fields += 1
        if not closed:
            raise MultiPartException("Invalid multipart data: the body ends before the closing boundary.")
    except BaseException:
        for upload in files:
            upload.file.close()
        raise
    return FormData(items)
