"""msdn_core.readers.dicom on pydicom's real files and on synthetic series."""

from __future__ import annotations

import contextlib
import copy
import io
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from msdn_core.errors import MsdnError
from msdn_core.readers.dicom import parse_dicom, read_series
from tests.service.helpers import ct5n_paths, pydicom_file
from tests.support.dicom_series import ct_series, phantom, to_bytes

CT_ONLY = {"allowed_modalities": ["CT"]}


@contextlib.contextmanager
def _raises(code: str, match: str | None = None):
    """An MsdnError with ``code`` (and a message matching ``match``)."""
    with pytest.raises(MsdnError, match=match) as err:
        yield err
    assert err.value.code == code, err.value.message


def series_volume(items, *, settings=None, **options):
    return read_series(items, **{**CT_ONLY, **(settings or {}), **options})


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    """Independent path: pydicom's own pixel_array + modality LUT."""
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


def test_ct_small_single_slice_in_hounsfield_units():
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    expected = _hu(pydicom.dcmread(pydicom_file("CT_small.dcm")))
    image = series_volume([ds])
    assert image.shape == (1, 128, 128)
    np.testing.assert_array_equal(image.array[0], expected)
    assert image.array.min() == -896.0  # stored minimum 128 with intercept -1024
    assert image.spacing[1:] == pytest.approx((0.661468, 0.661468))
    assert image.modality == "CT" and image.source == "dicom"


def test_ct5n_series_sorted_along_the_normal_whatever_the_upload_order():
    paths = ct5n_paths()
    datasets = [pydicom.dcmread(p) for p in paths]
    by_z = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([_hu(copy.deepcopy(d)) for d in by_z])
    shuffled = datasets[:]
    random.Random(3).shuffle(shuffled)
    image = series_volume([(f"f{i}", d) for i, d in enumerate(shuffled)])
    assert image.shape == (5, 16, 16)
    np.testing.assert_array_equal(image.array, expected)
    assert image.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    uids = [str(d.SOPInstanceUID) for d in by_z]
    assert image.series.sop_instance_uids == uids
    # affine (LPS): voxel (0, 0, z) is the z-th sorted position; the RAS form flips x and y
    for z in (0, 4):
        lps = np.array([float(v) for v in by_z[z].ImagePositionPatient])
        np.testing.assert_allclose(image.affine @ [0, 0, z, 1], [*lps, 1], atol=1e-4)
        np.testing.assert_allclose(image.affine_ras @ [0, 0, z, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-4)
    assert image.frame_of_reference_uid == str(by_z[0].FrameOfReferenceUID)
    assert image.duplicates_dropped == 0 and image.tilt_deg == 0.0


def test_jpeg2000_512_ct_is_decoded():
    ds = pydicom.dcmread(pydicom_file("693_J2KI.dcm"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    expected = _hu(pydicom.dcmread(pydicom_file("693_J2KI.dcm")))
    image = series_volume([ds])
    assert image.shape == (1, 512, 512)
    np.testing.assert_array_equal(image.array[0], expected)
    assert "PixelData" not in ds  # released after decoding


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_synthetic_series_round_trip(syntax):
    hu = phantom((3, 32, 48))
    datasets = [pydicom.dcmread(io.BytesIO(to_bytes(d))) for d in ct_series(hu, transfer_syntax=syntax)]
    assert datasets[0].file_meta.TransferSyntaxUID == syntax
    image = series_volume(datasets)
    np.testing.assert_array_equal(image.array, hu.astype(np.float32))


def test_rescale_slope_is_applied():
    hu = np.full((2, 16, 16), 100.0)
    hu[:, 4:8, 4:8] = 500.0
    image = series_volume(ct_series(hu, slope=0.5, intercept=-1024.0))
    np.testing.assert_array_equal(image.array, hu)


def test_enhanced_multiframe_ct_matches_the_single_frame_series():
    import highdicom as hd

    paths = ct5n_paths()
    singles = [pydicom.dcmread(p) for p in paths]
    expected = series_volume([pydicom.dcmread(p) for p in paths])
    multi = hd.legacy.LegacyConvertedEnhancedCTImage(
        singles,
        series_instance_uid=generate_uid(),
        series_number=9,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    ds = pydicom.dcmread(io.BytesIO(to_bytes(multi)))
    assert int(ds.NumberOfFrames) == 5 and "PerFrameFunctionalGroupsSequence" in ds
    image = series_volume([ds])
    np.testing.assert_array_equal(image.array, expected.array)
    assert image.spacing == pytest.approx(expected.spacing)
    assert image.series.multiframe
    # frame numbers follow the sorted positions
    positions = [
        float(ds.PerFrameFunctionalGroupsSequence[f - 1].PlanePositionSequence[0].ImagePositionPatient[2])
        for f in image.series.frame_numbers
    ]
    assert positions == sorted(positions)


def test_not_dicom_and_meta_less_files():
    with _raises("not_dicom", match="not a DICOM Part 10 file"):
        parse_dicom(b"hello, this is text", name="note.txt")
    with _raises("not_dicom", match="no_meta.dcm: not a DICOM Part 10"):
        parse_dicom(Path(pydicom_file("no_meta.dcm")).read_bytes(), name="no_meta.dcm")


def test_truncated_pixel_data_is_a_clear_error():
    ds = pydicom.dcmread(pydicom_file("MR_truncated.dcm"))
    mr = {"allowed_modalities": ["MR"]}
    with pytest.raises(MsdnError) as err:
        series_volume([("MR_truncated.dcm", ds)], settings=mr)
    assert err.value.code == "pixel_data_invalid"
    assert "MR_truncated.dcm" in err.value.message


def test_modality_not_allowed():
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    with _raises("modality_not_allowed", match="'MR' is not allowed"):
        series_volume([ds])
    anything = {"allowed_modalities": ["*"]}
    assert series_volume([ds], settings=anything).modality == "MR"


def test_no_pixel_data():
    ds = pydicom.dcmread(pydicom_file("rtplan.dcm"))
    anything = {"allowed_modalities": ["*"]}
    with _raises("no_pixel_data", match="rtplan.dcm: no pixel data"):
        series_volume([("rtplan.dcm", ds)], settings=anything)


def test_mixed_series_lists_them_and_series_uid_picks_one():
    a = ct_series(np.zeros((2, 8, 8)))
    b = ct_series(np.ones((3, 8, 8)) * 50)
    with _raises("mixed_series") as err:
        series_volume(a + b)
    listed = {s["series_instance_uid"]: s["instances"] for s in err.value.detail["series"]}
    assert listed == {a[0].SeriesInstanceUID: 2, b[0].SeriesInstanceUID: 3}
    image = series_volume(a + b, series_uid=str(b[0].SeriesInstanceUID))
    assert image.shape == (3, 8, 8) and float(image.array.max()) == 50.0
    with _raises("mixed_series", match="not in the upload"):
        series_volume(a + b, series_uid="1.2.3")


def test_duplicate_positions():
    datasets = ct_series(np.zeros((3, 8, 8)))
    datasets[2].ImagePositionPatient = list(datasets[1].ImagePositionPatient)
    with _raises("inconsistent_geometry", match="duplicate slice positions"):
        series_volume(datasets)


def test_irregular_spacing():
    datasets = ct_series(np.zeros((6, 8, 8)), spacing=(2.0, 1.0, 1.0))
    del datasets[3]  # a missing slice: gaps 2, 2, 4, 2 mm
    with _raises("inconsistent_geometry", match=r"irregular slice spacing: 4\.000 mm .* median gap 2\.000"):
        series_volume(datasets)


def test_mixed_orientations():
    datasets = ct_series(np.zeros((3, 8, 8)))
    datasets[1].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with _raises("inconsistent_geometry", match="mixed orientations"):
        series_volume(datasets)


def test_mixed_sizes():
    a = ct_series(np.zeros((2, 8, 8)))
    b = ct_series(np.zeros((1, 8, 10)), series_uid=str(a[0].SeriesInstanceUID))
    with _raises("inconsistent_geometry", match="mixes image sizes"):
        series_volume(a + b)


def test_sagittal_series_sorted_along_its_normal():
    hu = np.arange(3 * 4 * 5, dtype=float).reshape(3, 4, 5)
    datasets = ct_series(hu, orientation=(0, 1, 0, 0, 0, -1), spacing=(1.5, 1.0, 1.0))
    image = series_volume(list(reversed(datasets)))
    np.testing.assert_array_equal(image.array, hu)
    assert image.spacing[0] == pytest.approx(1.5)


def test_unsupported_transfer_syntax():
    ds = ct_series(np.zeros((1, 8, 8)))[0]
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    with _raises("unsupported_transfer_syntax", match="MPEG2"):
        series_volume([ds])


def test_slice_and_voxel_limits():
    datasets = ct_series(np.zeros((4, 8, 8)))
    with pytest.raises(MsdnError) as err:
        series_volume(datasets, max_slices=3)
    assert err.value.code == "too_many_slices"
    with pytest.raises(MsdnError) as err:
        series_volume(datasets, max_voxels=4 * 8 * 8 - 1)
    assert err.value.code == "too_many_voxels"


def test_an_instance_sent_twice_is_dropped_and_counted():
    datasets = ct_series(phantom((3, 16, 16)))
    again = [pydicom.dcmread(io.BytesIO(to_bytes(d))) for d in datasets[:2]]  # a resend: same UIDs, same content
    image = series_volume(datasets + again)
    assert image.shape == (3, 16, 16) and image.duplicates_dropped == 2
    np.testing.assert_array_equal(image.array, series_volume(ct_series(phantom((3, 16, 16)))).array)


def test_one_uid_with_different_content_is_refused():
    datasets = ct_series(phantom((3, 16, 16)))
    other = copy.deepcopy(datasets[1])
    other.PixelData = bytes(len(other.PixelData))
    with _raises("inconsistent_geometry", "same SOP Instance UID .* but different content"):
        series_volume(datasets + [other])


def test_two_different_instances_at_one_position_are_refused():
    datasets = ct_series(phantom((3, 16, 16)))
    extra = copy.deepcopy(datasets[1])
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    with _raises("inconsistent_geometry", "duplicate slice positions: .* different instances"):
        series_volume(datasets + [extra])


def _tilted(shift_px: float, *, slices: int = 4) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """A series acquired with a tilted gantry: slice z is shifted by z * shift_px rows in its plane.

    A fixed object (rows 10..14, columns 8..12, 500 HU) therefore appears ``z * shift_px`` rows higher
    in acquired slice z; on the orthogonal grid it is at rows 10..14 of every slice.
    """
    sz, sy = 2.5, 0.75
    hu = np.full((slices, 24, 24), -1000.0)
    truth = hu.copy()
    for z in range(slices):
        hu[z, 10 - int(z * shift_px) : 15 - int(z * shift_px), 8:13] = 500.0
        truth[z, 10:15, 8:13] = 500.0
    datasets = ct_series(hu, spacing=(sz, sy, sy))
    for z, ds in enumerate(datasets):
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        ds.ImagePositionPatient = [float(v) for v in pos + [0.0, z * shift_px * sy, 0.0]]
    return datasets, truth


def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid():
    datasets, truth = _tilted(1.0)
    image = series_volume(datasets)
    assert image.tilt_deg == pytest.approx(np.degrees(np.arctan(0.75 / 2.5)), abs=1e-6)
    np.testing.assert_allclose(image.affine[:3, :3], np.diag([0.75, 0.75, 2.5]), atol=1e-9)  # no shear left
    np.testing.assert_allclose(image.origin, [float(v) for v in datasets[0].ImagePositionPatient])
    # rows that stay in the field of view hold the object where it physically is
    np.testing.assert_array_equal(image.array[:, 4:, :], truth[:, 4:, :])


def test_gantry_tilt_over_the_maximum_is_refused():
    datasets, _ = _tilted(1.0)
    with _raises("inconsistent_geometry", r"gantry tilt 16\.70 degrees is over the 10 degrees") as err:
        series_volume(datasets, max_tilt_deg=10.0)
    assert err.value.detail["tilt_deg"] == pytest.approx(16.699, abs=1e-3)


def test_gap_tolerance_is_an_option():
    datasets = ct_series(np.zeros((4, 8, 8)), spacing=(2.0, 1.0, 1.0))
    ds = datasets[3]
    ds.ImagePositionPatient = [*list(ds.ImagePositionPatient)[:2], float(ds.ImagePositionPatient[2]) + 0.06]  # 3%
    assert series_volume(datasets, release_pixels=False).shape == (4, 8, 8)
    with _raises("inconsistent_geometry", "irregular slice spacing"):
        series_volume(datasets, gap_rtol=0.01)


# --- partial decode (box mode): headers first, pixel data of the needed slices only ---------------


def _deferred(datasets):
    """(name, dataset parsed with deferred pixel reads, its open source) of each file."""
    out = []
    for i, ds in enumerate(datasets):
        source = io.BytesIO(to_bytes(ds))
        out.append((f"s{i}.dcm", parse_dicom(source, name=f"s{i}.dcm", defer_pixels=True), source))
    return out


@pytest.mark.parametrize("transfer_syntax", [None, RLELossless])
def test_partial_decode_gives_the_full_decode_pixels_of_the_touched_slices(transfer_syntax):
    hu = phantom((6, 128, 128), seed=3)
    options = {} if transfer_syntax is None else {"transfer_syntax": transfer_syntax}
    datasets = ct_series(hu, **options)
    random.Random(1).shuffle(datasets)  # slice order comes from the positions, not the file order
    full = series_volume([(f"s{i}.dcm", parse_dicom(to_bytes(ds), name="x")) for i, ds in enumerate(datasets)])
    items = _deferred(datasets)
    # Parsed headers only: the pixel data is still a deferred (unread) element.
    assert all(ds._dict[0x7FE00010].value is None for _, ds, _ in items)
    shapes = []

    def wanted(shape, affine):
        shapes.append((shape, affine))
        return [4, 1, 4, 99]  # repeats and indices outside the volume are ignored

    part = series_volume([(n, ds) for n, ds, _ in items], slices=wanted, compact=True)
    assert [s for s, _ in shapes] == [(6, 128, 128)]
    np.testing.assert_allclose(shapes[0][1], full.affine)  # the grid's LPS affine, known before any decode
    assert part.array.dtype == np.int16 and full.array.dtype == np.float32
    assert part.decoded.tolist() == [1, 4]
    for z in (1, 4):
        np.testing.assert_array_equal(part.array[z], full.array[z])
        np.testing.assert_array_equal(part.array[z], np.round(hu[z]))  # independent: the HU written
    assert not part.array[[0, 2, 3, 5]].any()
    np.testing.assert_array_equal(part.affine, full.affine)
    # Every source was closed by the reader (the pixel data of the other slices never read).
    assert all(source.closed for _, _, source in items)


def test_compact_keeps_float32_where_values_are_not_int16():
    hu = phantom((3, 128, 128), seed=4)
    fractional = series_volume(ct_series(hu, slope=0.5, intercept=-1024.0), compact=True)
    assert fractional.array.dtype == np.float32
    big = np.full((3, 128, 128), 40000.0)
    big[:, :4, :4] = 0.0
    wide = series_volume(ct_series(big, intercept=0.0), compact=True)  # over int16: float32 from that slice on
    assert wide.array.dtype == np.float32 and wide.array.max() == 40000.0 and wide.array.min() == 0.0


def test_whole_series_with_deferred_reads_equals_the_plain_read():
    hu = phantom((4, 128, 128), seed=5)
    datasets = ct_series(hu)
    plain = series_volume([(f"s{i}.dcm", parse_dicom(to_bytes(ds), name="x")) for i, ds in enumerate(datasets)])
    lazy = series_volume([(n, ds) for n, ds, _ in _deferred(datasets)], compact=True)
    assert lazy.decoded is None and lazy.array.dtype == np.int16
    np.testing.assert_array_equal(lazy.array, plain.array)


def test_lazy_read_decodes_slices_when_asked_and_releases_each_instance():
    hu = phantom((5, 128, 128), seed=6)
    datasets = ct_series(hu)
    plain = series_volume([(f"s{i}.dcm", parse_dicom(to_bytes(ds), name="x")) for i, ds in enumerate(datasets)])
    items = _deferred(datasets)
    lazy = series_volume([(n, ds) for n, ds, _ in items], compact=True, lazy=True)
    assert lazy.loader is not None and not lazy.array.any()  # nothing decoded yet
    first = lazy.load(0, 2)
    np.testing.assert_array_equal(first[:2], plain.array[:2])
    assert not first[2:].any()
    assert [source.closed for _, _, source in items] == [True, True, False, False, False]
    np.testing.assert_array_equal(lazy.load(), plain.array)
    assert lazy.loader is None and all(source.closed for _, _, source in items)


def _implicit_vr_bytes(ds: pydicom.Dataset) -> bytes:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("implicit", [False, True])
def test_header_values_read_from_the_raw_elements_equal_pydicoms(implicit):
    """The reader's fast path for the geometry values (DS/IS numbers, UI/CS text, US) against
    pydicom's own conversion of a fresh parse of the same file; unusual values take pydicom's path."""
    from msdn_core.readers.dicom import _value

    ds = ct_series(phantom((1, 8, 8)), spacing=(2.5, 0.7, 0.6), slope=0.5)[0]
    ds.NumberOfFrames = 1
    ds.RescaleIntercept = ""  # empty: pydicom's value
    data = _implicit_vr_bytes(ds) if implicit else to_bytes(ds)
    fast, reference = parse_dicom(data, name="a"), parse_dicom(data, name="b")
    keywords = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"]
    keywords += ["NumberOfFrames", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns"]
    keywords += ["SamplesPerPixel", "BitsAllocated"]
    for keyword in keywords:
        got, want = _value(fast, keyword), reference.get(keyword)
        assert got == want and type(got) in (type(want), float, int, str, list), keyword
    assert _value(fast, "PixelSpacing") == [0.7, 0.6] and _value(fast, "Rows") == 8
    assert _value(fast, "SliceLocation", "absent") == "absent"
    assert _value(fast, "RescaleIntercept") in ("", None)


@pytest.mark.parametrize(
    "bits, stored, signed, frames, implicit",
    [(16, 16, 0, 1, False), (16, 16, 1, 1, True), (8, 8, 0, 1, False), (16, 16, 1, 3, False), (16, 12, 0, 1, False)],
)
def test_native_pixel_data_read_directly_equals_pydicoms_decoding(bits, stored, signed, frames, implicit):
    """Uncompressed little-endian pixel data are viewed straight from the element (the reader's fast
    path) or, when not all bits are stored, decoded by pydicom: both equal pydicom's pixel_array."""
    from msdn_core.readers.dicom import _decode, _native

    rng = np.random.default_rng(bits + stored + signed + frames)
    ds = ct_series(phantom((1, 6, 5)))[0]
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    info = np.iinfo(dtype)
    high = min(info.max, (1 << (stored - signed)) - 1)
    low = -high - 1 if signed else 0
    values = rng.integers(low, high + 1, size=(frames, 6, 5)).astype(dtype)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, signed
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = values.tobytes()
    data = _implicit_vr_bytes(ds) if implicit else to_bytes(ds)
    parsed = parse_dicom(data, name="x", defer_pixels=True)
    assert (_native(parsed) is None) == (stored != bits)
    decoded = _decode(parsed, "x")
    reference = pydicom.dcmread(io.BytesIO(data)).pixel_array
    np.testing.assert_array_equal(decoded, reference.reshape(decoded.shape))
    np.testing.assert_array_equal(decoded, values)  # the values written, by hand
    assert decoded.dtype == reference.dtype
