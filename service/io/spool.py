"""One temporary file shared by many byte ranges: the spool of an upload and its parts.

:class:`Spool` is an anonymous temporary file (``tempfile.TemporaryFile``: in ``TMPDIR``, unlinked at
creation, so nothing is left if the process dies) written by appending; :class:`PartFile` is a
buffered, seekable, read-only binary file over one byte range of it, read with positional reads
(``os.preadv``), so parts are read from any thread without a shared file position. The spool's
pages stay in the page cache, not in the process. The multipart parser
(:mod:`service.io.multipart`) spools request bodies, and zip expansion (:mod:`service.io.upload`)
the members of an uploaded zip, this way.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from typing import Optional

#: Read-ahead of each part's buffered reader (pydicom reads headers a few bytes at a time).
PART_BUFFER_BYTES = 64 * 1024


class Spool:
    """Bytes appended to an anonymous temporary file (a request body, a zip's members), shared by
    the parts read from it.

    The file is closed when the parser and every part opened on it are closed.
    """

    def __init__(self, *, dir: Optional[str] = None):  # noqa: A002 - tempfile's own name
        self._file = tempfile.TemporaryFile(dir=dir)
        self.fd = self._file.fileno()
        self.size = 0
        self._users = 1
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        """Append ``data`` at the end of the spool."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, self.size)
            self.size += written
            view = view[written:]

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset``."""
        return os.pread(self.fd, size, offset)

    def acquire(self) -> None:
        with self._lock:
            if self._users <= 0:
                raise ValueError("the spool is closed")
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self._file.close()


class _PartRange(io.RawIOBase):
    """The bytes ``[start, end)`` of a :class:`Spool` as a seekable raw binary file."""

    def __init__(self, spool: Spool, start: int, end: int):
        super().__init__()
        spool.acquire()
        self._spool = spool
        self._start = start
        self._size = end - start
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - any writable buffer
        if self.closed:
            raise ValueError("read from a closed part")
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        got = os.preadv(self._spool.fd, [view[:want]], self._start + self._pos)
        self._pos += got
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"whence must be 0, 1 or 2, got {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._spool.release()


class PartFile(io.BufferedIOBase):
    """A file part of a spooled body: a buffered, seekable, read-only binary file of its bytes.

    Not an ``io.BufferedReader`` itself (pydicom takes those for files it may reopen by name): it
    delegates to one over the part's byte range.
    """

    def __init__(self, spool: Spool, start: int, end: int, *, buffer_size: int = PART_BUFFER_BYTES):
        super().__init__()
        self._reader = reader = io.BufferedReader(_PartRange(spool, start, end), buffer_size=buffer_size)
        self.size = end - start
        # The reader's own methods, bound here: pydicom reads a header with thousands of small reads.
        self.read = reader.read
        self.read1 = reader.read1
        self.readinto = reader.readinto
        self.readinto1 = reader.readinto1
        self.peek = reader.peek
        self.seek = reader.seek
        self.tell = reader.tell

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
            super().close()
