"""``msdn synth`` benchmark: generation time per case and statistics of what is drawn.

Usage::

    PYTHONPATH=. python benchmarks/synth_data.py [--cases 60] [--repeats 5] [--seed 0]

Prints three tables:

1. time per case (median of ``--repeats`` cases, single process): drawing the volume, writing it as
   NIfTI (image + mask, gzip) and as a DICOM series, at the default and the smallest size;
2. lung nodules over ``--cases`` cases: diameter quantiles, mix of shapes / densities / positions,
   and contrast-to-noise ratio per density (|median HU inside the eroded mask - median HU of a
   2-4 mm ring around it| / the noise standard deviation drawn for the case);
3. cochlea over ``--cases`` cases: lumen volume and the contrast to its bony wall.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from model_export.data.synth import generate_case, write_ct_series
from model_export.data.volumes import write_nifti


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def timing_table(repeats: int, seed: int) -> list[str]:
    rows = [
        "| task | size (Z x Y x X) | draw s | NIfTI write s | DICOM write s | NIfTI MB | DICOM MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for task, sizes in (("lung", ((192, 32), (128, 16))), ("cochlea", ((192, 24), (128, 16)))):
            for size, slices in sizes:
                draw, nii, dcm, nii_mb, dcm_mb = [], [], [], [], []
                for i in range(repeats):
                    t0 = time.perf_counter()
                    case = generate_case(task, i, seed=seed, size=size, slices=slices)
                    t = time.perf_counter() - t0
                    draw.append(t)
                    folder = tmp / f"{task}{size}_{i}"

                    def nifti(case=case, folder=folder):
                        write_nifti(folder / "image.nii.gz", case.image, affine=case.ras_affine())
                        write_nifti(folder / "mask.nii.gz", case.mask, affine=case.ras_affine())

                    nii.append(_timed(nifti)[0])
                    nii_mb.append(sum(p.stat().st_size for p in folder.iterdir()) / 1e6)
                    t, _ = _timed(
                        lambda case=case, folder=folder: write_ct_series(
                            folder / "dicom",
                            case.image,
                            spacing=case.spacing,
                            origin=case.origin,
                            key=str(folder),
                            patient_id="BENCH",
                        )
                    )
                    dcm.append(t)
                    dcm_mb.append(sum(p.stat().st_size for p in (folder / "dicom").iterdir()) / 1e6)
                rows.append(
                    f"| {task} | {slices} x {size} x {size} | {statistics.median(draw):.2f} | "
                    f"{statistics.median(nii):.2f} | {statistics.median(dcm):.2f} | "
                    f"{statistics.median(nii_mb):.2f} | {statistics.median(dcm_mb):.2f} |"
                )
    return rows


def _ring_contrast(case, inner_mm: float, outer_mm: float) -> tuple[float, float]:
    """(median HU inside the eroded mask, median HU in a ring inner..outer mm outside the mask)."""
    mask = case.mask > 0
    sz, sy, _ = case.spacing
    dist_out = ndimage.distance_transform_edt(~mask, sampling=case.spacing)
    ring = (dist_out > inner_mm) & (dist_out <= outer_mm)
    core = ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool))
    core = core if core.sum() >= 3 else mask
    image = case.image.astype(np.float32)
    return float(np.median(image[core])), float(np.median(image[ring]))


def lung_table(n: int, seed: int) -> list[str]:
    cases = [generate_case("lung", i, seed=seed) for i in range(n)]
    d = np.array([c.meta["diameter_mm"] for c in cases])
    q = np.percentile(d, [0, 10, 25, 50, 75, 90, 100])
    rows = [
        f"lung nodules over {n} cases (192 x 192 x 32, seed {seed})",
        "",
        "| diameter mm: min | p10 | p25 | median | p75 | p90 | max |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| " + " | ".join(f"{v:.1f}" for v in q) + " |",
        "",
    ]
    for key in ("shape", "density", "position"):
        counts = Counter(c.meta[key] for c in cases)
        rows.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    rows += [
        "",
        "| density | cases | median HU inside | median HU ring 2-4 mm | median CNR | min CNR |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    by = {}
    for c in cases:
        inside, ring = _ring_contrast(c, 2.0, 4.0)
        by.setdefault(c.meta["density"], []).append((inside, ring, abs(inside - ring) / c.meta["noise_hu"]))
    for density in ("solid", "part-solid", "ground-glass"):
        v = np.array(by.get(density, [(np.nan,) * 3]))
        rows.append(
            f"| {density} | {len(by.get(density, []))} | {np.median(v[:, 0]):.0f} | {np.median(v[:, 1]):.0f} "
            f"| {np.median(v[:, 2]):.1f} | {np.min(v[:, 2]):.1f} |"
        )
    return rows


def cochlea_table(n: int, seed: int) -> list[str]:
    cases = [generate_case("cochlea", i, seed=seed) for i in range(n)]
    vol = np.array([c.meta["volume_mm3"] for c in cases])
    slices = np.array([int(c.mask.any(axis=(1, 2)).sum()) for c in cases])
    contrast = [_ring_contrast(c, 0.4, 1.2) for c in cases]
    cnr = np.array([abs(a - b) / c.meta["noise_hu"] for (a, b), c in zip(contrast, cases, strict=True)])
    return [
        f"cochlea over {n} cases (192 x 192 x 24, seed {seed})",
        "",
        "| lumen volume mm3 (min / median / max) | slices with cochlea | median HU lumen | median HU wall ring "
        "0.4-1.2 mm | median CNR |",
        "| --- | --- | --- | --- | --- |",
        f"| {vol.min():.0f} / {np.median(vol):.0f} / {vol.max():.0f} | {slices.min()}-{slices.max()} | "
        f"{np.median([a for a, _ in contrast]):.0f} | {np.median([b for _, b in contrast]):.0f} | "
        f"{np.median(cnr):.1f} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("\n".join(timing_table(args.repeats, args.seed)))
    print()
    print("\n".join(lung_table(args.cases, args.seed)))
    print()
    print("\n".join(cochlea_table(args.cases, args.seed)))


if __name__ == "__main__":
    main()
