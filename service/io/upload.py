"""Uploaded files: size limits and safe zip expansion.

A DICOM upload is one or more files, any of which may be a ``.zip`` of the series. Zip members are
read into memory (never written to disk) after these checks, each answered with a clear 4xx:

* a member name that is absolute or climbs out with ``..`` (``zip_path_traversal``), a symbolic link
  (``zip_symlink``) or an encrypted member (``zip_encrypted``): the whole zip is refused;
* more members than ``max_files``, a total uncompressed size over ``max_zip_uncompressed_bytes``
  (``zip_too_large``) or a member over ``max_zip_ratio`` times its compressed size (``zip_ratio``).

Directory entries, ``__MACOSX/`` resource forks, hidden files and ``DICOMDIR`` are skipped.
"""

from __future__ import annotations

import io
import logging
import stat
import zipfile
from pathlib import PurePosixPath, PureWindowsPath
from typing import BinaryIO, Iterable, Iterator

from service.errors import ErrorCode, InvalidInput, LimitExceeded, UnsafeZip
from service.settings import Settings

logger = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
#: The ratio check applies to members larger than this (tiny files compress "infinitely" well).
RATIO_CHECK_MIN_BYTES = 1 << 20
_CHUNK = 1 << 20


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


def zip_members(data: BinaryIO, *, name: str, settings: Settings) -> Iterator[tuple[str, bytes]]:
    """The (name, bytes) of the files in a zip, after the safety checks (module docstring).

    Raises:
        UnsafeZip, LimitExceeded, InvalidInput: see module docstring; ``invalid_zip`` for a corrupt one.
    """
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
        if len(wanted) > settings.max_files:
            raise LimitExceeded(
                f"{name}: {len(wanted)} files is over the limit of {settings.max_files} (MSDN_MAX_FILES)",
                code=ErrorCode.TOO_MANY_FILES,
            )
        total = sum(info.file_size for info in wanted)
        if total > settings.max_zip_uncompressed_bytes:
            raise LimitExceeded(
                f"{name}: {total} bytes uncompressed is over the limit of {settings.max_zip_uncompressed_bytes} "
                "(MSDN_MAX_ZIP_UNCOMPRESSED_BYTES)",
                code=ErrorCode.ZIP_TOO_LARGE,
            )
        for info in wanted:
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > RATIO_CHECK_MIN_BYTES and ratio > settings.max_zip_ratio:
                raise LimitExceeded(
                    f"{name}: member {info.filename!r} expands {ratio:.0f}-fold, over the limit of "
                    f"{settings.max_zip_ratio:g} (MSDN_MAX_ZIP_RATIO)",
                    code=ErrorCode.ZIP_RATIO,
                )
        for info in wanted:
            try:
                with archive.open(info) as fh:
                    # ZipExtFile stops at the declared size, so the checks above bound what is read.
                    content = fh.read()
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
                raise InvalidInput(
                    f"{name}: member {info.filename!r} cannot be read ({exc})", code=ErrorCode.INVALID_ZIP
                ) from None
            yield info.filename, content


def expand_files(files: Iterable[tuple[str, BinaryIO]], *, settings: Settings) -> list[tuple[str, BinaryIO]]:
    """Uploaded files with each zip replaced by its members.

    Args:
        files: (file name, readable binary file) pairs as uploaded.
        settings: limits.

    Raises:
        LimitExceeded: more than ``max_files`` files in all.
    """
    out: list[tuple[str, BinaryIO]] = []
    for name, fh in files:
        head = fh.read(4)
        fh.seek(0)
        if is_zip(head, name):
            out.extend(
                (f"{name}/{member}", io.BytesIO(content))
                for member, content in zip_members(fh, name=name, settings=settings)
            )
        else:
            out.append((name, fh))
        if len(out) > settings.max_files:
            raise LimitExceeded(
                f"{len(out)} files is over the limit of {settings.max_files} (MSDN_MAX_FILES)",
                code=ErrorCode.TOO_MANY_FILES,
            )
    return out
