"""msdn_core.readers: formats told apart by content."""

from __future__ import annotations

from msdn_core.readers import sniff


def test_sniff_by_content_not_name():
    assert sniff(b"NRRD0005\n") == "nrrd" and sniff(b"\x93NUMPY") == "npy" and sniff(b"\x1f\x8b..") == "gzip"
    assert sniff(b"\0" * 128 + b"DICM") == "dicom" and sniff(b"hello") == ""
