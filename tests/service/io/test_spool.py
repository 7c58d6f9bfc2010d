"""service.io.spool: byte ranges of one temporary file as files."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from service.io.spool import PartFile, Spool


def _binary(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def test_part_file_reads_seeks_and_reads_from_threads():
    data = _binary(300_000, 3)
    spool = Spool()
    spool.append(b"head" + data + b"tail")
    files = [PartFile(spool, 4, 4 + len(data), buffer_size=4096) for _ in range(4)]
    spool.release()
    f = files[0]
    assert f.read(10) == data[:10] and f.tell() == 10
    assert f.seek(-5, os.SEEK_END) == len(data) - 5 and f.read() == data[-5:] and f.read(1) == b""
    f.seek(100_000)
    assert f.read1(50) == data[100_000:100_050]
    buffer = bytearray(7)
    f.seek(3)
    assert f.readinto(buffer) == 7 and bytes(buffer) == data[3:10]
    with pytest.raises(ValueError):
        f.seek(-1)
    results = {}

    def read_back(i: int) -> None:
        files[i].seek(i * 1000)
        results[i] = b"".join(iter(lambda: files[i].read(999), b""))

    threads = [threading.Thread(target=read_back, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == data[i * 1000 :] for i in range(4))
    for f in files:
        f.close()
    with pytest.raises(ValueError):
        files[0].read(1)


def test_the_spool_closes_with_its_last_user():
    spool = Spool()
    spool.append(b"0123456789")
    a, b = PartFile(spool, 0, 4), PartFile(spool, 4, 10)
    spool.release()
    assert a.read() == b"0123" and b.read() == b"456789"
    a.close()
    os.fstat(spool.fd)  # b still reads
    b.close()
    with pytest.raises(OSError):
        os.fstat(spool.fd)
    with pytest.raises(ValueError):
        PartFile(spool, 0, 1)
