"""Uploaded files: size limits and safe zip expansion.

A DICOM upload is one or more files, any of which may be a ``.zip`` of the series. Zip members are
expanded after these checks, each failure answered with a clear 4xx:

* a member name that is absolute or climbs out with ``..`` (``zip_path_traversal``), a symbolic link
  (``zip_symlink``) or an encrypted member (``zip_encrypted``): the whole zip is refused;
* more members than ``max_files``, a total uncompressed size over ``max_zip_uncompressed_bytes``
  (``zip_too_large``), both counted over all the zips of a request, or a member over
  ``max_zip_ratio`` times its compressed size (``zip_ratio``; every member over 4 KiB).

Members are streamed out in chunks with the byte budget enforced on what really comes out (not on
the sizes the zip declares), all into one :class:`~service.io.spool.Spool` (an unlinked temporary
file), each member a :class:`~service.io.spool.PartFile` over its bytes: a request never holds its
members in memory.

Directory entries, ``__MACOSX/`` resource forks, hidden files and ``DICOMDIR`` are skipped.
"""

from __future__ import annotations

import logging
import stat
import zipfile
from pathlib import PurePosixPath, PureWindowsPath
from typing import BinaryIO, Iterable, Iterator

from service.errors import ErrorCode, InvalidInput, LimitExceeded, UnsafeZip
from service.io.spool import PartFile, Spool
from service.settings import Settings

logger = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
#: The ratio check applies to members larger than this (a few bytes compress "infinitely" well;
#: anything a DICOM file could be is checked).
RATIO_CHECK_MIN_BYTES = 4096
_CHUNK = 1 << 16


def is_zip(head: bytes, name: str) -> bool:
    """Whether a file is a zip archive, by its first bytes (or, for empty heads, its name)."""
    return head.startswith(ZIP_MAGIC) or (not head and name.lower().endswith(".zip"))


def _skipped(member: str) -> bool:
    parts = PurePosixPath(member).parts
    return (
        member.endswith("/")
        or (parts and parts[0] == "__MACOSX")
        or PurePosixPath(member).name.startswith(".")
        or PurePosixPath(member).name.upper() == "DICOMDIR"
    )


def _unsafe_name(member: str) -> bool:
    if member.startswith(("/", "\\")) or PureWindowsPath(member).drive:
        return True
    parts = member.replace("\\", "/").split("/")
    return ".." in parts


class ZipBudget:
    """What the zips of one request may still expand to: bytes and files, across all of them.

    Args:
        settings: ``max_zip_uncompressed_bytes`` and ``max_files`` are the request's totals.
    """

    def __init__(self, settings: Settings) -> None:
        self.bytes_left = settings.max_zip_uncompressed_bytes
        self.files_left = settings.max_files
        self.settings = settings

    def take_bytes(self, n: int, name: str) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise LimitExceeded(
                f"{name}: the zips of this request expand to more than {self.settings.max_zip_uncompressed_bytes} "
                "bytes (MSDN_MAX_ZIP_UNCOMPRESSED_BYTES)",
                code=ErrorCode.ZIP_TOO_LARGE,
            )

    def take_files(self, n: int, name: str) -> None:
        self.files_left -= n
        if self.files_left < 0:
            raise LimitExceeded(
                f"{name}: more than {self.settings.max_files} files in this request (MSDN_MAX_FILES)",
                code=ErrorCode.TOO_MANY_FILES,
            )


def _open_members(
    data: BinaryIO, *, name: str, settings: Settings, budget: ZipBudget
) -> Iterator[tuple[str, BinaryIO]]:
    """The members of a zip after the checks, streamed into one spool, each a file over its bytes."""
    try:
        archive = zipfile.ZipFile(data)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"{name}: not a readable zip archive ({exc})", code=ErrorCode.INVALID_ZIP) from None
    with archive:
        infos = archive.infolist()
        for info in infos:
            member = info.filename
            if _unsafe_name(member):
                raise UnsafeZip(
                    f"{name}: member {member!r} points outside the archive (absolute path or '..')",
                    code=ErrorCode.ZIP_PATH_TRAVERSAL,
                )
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeZip(f"{name}: member {member!r} is a symbolic link", code=ErrorCode.ZIP_SYMLINK)
            if info.flag_bits & 0x1:
                raise UnsafeZip(f"{name}: member {member!r} is encrypted", code=ErrorCode.ZIP_ENCRYPTED)
        wanted = [info for info in infos if not _skipped(info.filename)]
        if len(wanted) > budget.files_left:
            raise LimitExceeded(
                f"{name}: {len(wanted)} files is over the limit of {settings.max_files} (MSDN_MAX_FILES)",
                code=ErrorCode.TOO_MANY_FILES,
            )
        declared = sum(info.file_size for info in wanted)
        if declared > budget.bytes_left:
            raise LimitExceeded(
                f"{name}: {declared} bytes uncompressed is over the limit of {settings.max_zip_uncompressed_bytes} "
                "(MSDN_MAX_ZIP_UNCOMPRESSED_BYTES, for all zips of a request)",
                code=ErrorCode.ZIP_TOO_LARGE,
            )
        for info in wanted:  # every member, however small: 1000 x 1 MiB of zeros is a bomb too
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > RATIO_CHECK_MIN_BYTES and ratio > settings.max_zip_ratio:
                raise LimitExceeded(
                    f"{name}: member {info.filename!r} expands {ratio:.0f}-fold, over the limit of "
                    f"{settings.max_zip_ratio:g} (MSDN_MAX_ZIP_RATIO)",
                    code=ErrorCode.ZIP_RATIO,
                )
        spool = Spool()
        try:
            for info in wanted:
                budget.take_files(1, name)
                start = spool.size
                try:
                    with archive.open(info) as fh:
                        # Read in chunks, counting what really comes out (never trusting the declared size).
                        while chunk := fh.read(_CHUNK):
                            budget.take_bytes(len(chunk), name)
                            spool.append(chunk)
                except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
                    raise InvalidInput(
                        f"{name}: member {info.filename!r} cannot be read ({exc})", code=ErrorCode.INVALID_ZIP
                    ) from None
                yield info.filename, PartFile(spool, start, spool.size)
        finally:
            spool.release()  # the members' files hold their own references


def zip_members(
    data: BinaryIO, *, name: str, settings: Settings, budget: ZipBudget | None = None
) -> Iterator[tuple[str, bytes]]:
    """The (name, bytes) of the files in a zip, one at a time, after the safety checks (module docstring).

    Raises:
        UnsafeZip, LimitExceeded, InvalidInput: see module docstring; ``invalid_zip`` for a corrupt one.
    """
    for member, fh in _open_members(data, name=name, settings=settings, budget=budget or ZipBudget(settings)):
        with fh:
            yield member, fh.read()


def expand_files(files: Iterable[tuple[str, BinaryIO]], *, settings: Settings) -> list[tuple[str, BinaryIO]]:
    """Uploaded files with each zip replaced by its members (files over their bytes in a spool).

    The zip limits apply to the request as a whole: ``max_files`` files and
    ``max_zip_uncompressed_bytes`` bytes across all its zips.

    Args:
        files: (file name, readable binary file) pairs as uploaded.
        settings: limits.

    Raises:
        LimitExceeded: more than ``max_files`` files in all, or the zips expand too much.
    """
    budget = ZipBudget(settings)
    out: list[tuple[str, BinaryIO]] = []
    try:
        for name, fh in files:
            head = fh.read(4)
            fh.seek(0)
            if is_zip(head, name):
                for member, content in _open_members(fh, name=name, settings=settings, budget=budget):
                    out.append((f"{name}/{member}", content))
            else:
                budget.take_files(1, name)
                out.append((name, fh))
            if len(out) > settings.max_files:
                raise LimitExceeded(
                    f"{len(out)} files is over the limit of {settings.max_files} (MSDN_MAX_FILES)",
                    code=ErrorCode.TOO_MANY_FILES,
                )
    except BaseException:
        for _, fh in out:
            fh.close()
        raise
    return out
