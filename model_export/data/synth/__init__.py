"""``msdn synth``: deterministic synthetic CT benchmark data mimicking the paper's two tasks.

No public CT can be downloaded where this project runs, so it draws its own data from a seed.
Generator version 5 (the default) draws ``lung`` cases as full-size chest series with 0-4 nodules
(:mod:`.chest`: 512 x 512 by default, 256 for CPU runs, 80-160 slices drawn per case unless
``slices`` is given, per-nodule ``meta["nodules"]`` with centre, diameter, type, position and 3D box);
``version=4`` gives the cut-outs below, byte for byte as before:

* ``lung``: chest CT cut-outs around one lung nodule (3-30 mm; round / lobulated / spiculated;
  solid / part-solid / ground-glass; isolated / juxta-vascular / juxta-pleural) among vessels,
  bronchi and chest wall, with partial-volume blur and low-dose noise. Spacing 0.55-0.7 mm in-plane,
  1.25 mm slices. Class 1 ``nodule``. Paper split 160/80/80. See :mod:`.lung`.
* ``cochlea``: temporal-bone CT cut-outs around the cochlea (a 2.4-2.8 turn spiral fluid lumen in
  dense otic capsule) with vestibule, semicircular canals, internal auditory canal, middle ear,
  ossicles and mastoid air cells as distractors. Spacing 0.40625 mm in-plane, 1 mm slices. Class 1
  ``cochlea``. Paper split 66/40/40. See :mod:`.cochlea`.

Public API (stable)::

    generate(task, out_dir, *, num_cases=None, seed=0, size=None, slices=None, dicom=False,
             boxes=False, workers=1, progress=None, version=5) -> Path   # the manifest.json written
    generate_case(task, index, *, seed=0, size=None, slices=None, version=5) -> SynthCase
    resolve_split(task, num_cases) -> {"train": n, "val": n, "test": n}
    parse_split("160/80/80") -> {"train": 160, "val": 80, "test": 80}
    write_ct_series(folder, hu, *, spacing, origin, key, patient_id, ...) -> [paths]
    TASKS, GENERATOR_VERSION, SynthCase, case_id(task, index)

``num_cases``: None -> the paper's split (full-size lung series: 60/10/40); an int N >= 3 -> N cases
in the paper's proportions; a dict {"train": a, "val": b, "test": c}. ``size``: in-plane pixels
(Y = X, >= 128, default 192);
``slices``: axial slices (default lung 32, cochlea 24). ``dicom=True`` writes each image as a CT DICOM
series folder ``dicom/<id>/`` (the manifest's ``image`` points at it) instead of
``images/<id>.nii.gz``; masks are always ``masks/<id>.nii.gz`` (uint8). ``boxes=True`` also stores
per-slice boxes derived from the mask in each case (the mask stays: the case is still strong).

Case ``i`` of a task depends only on (seed, task, i, size, slices): the same arguments give
byte-identical arrays, and a larger data set starts with the same cases as a smaller one. Case ids are
``<task>_<iii>``; cases are assigned to train, then val, then test in id order. Each manifest case
carries a ``meta`` object (what was drawn: nodule diameter, shape, density, position, noise...) and the
manifest a ``generator`` object (tool, version, task, seed, size, slices, split); the manifest reader
ignores both.

On-disk layout: ``out_dir/manifest.json``, ``out_dir/images/`` (or ``out_dir/dicom/``),
``out_dir/masks/``. NIfTI affines are RAS and match the DICOM geometry (LPS, axial, rows along +x).
"""

from model_export.data.synth.common import SynthCase
from model_export.data.synth.dicom_writer import write_ct_series
from model_export.data.synth.generator import (
    GENERATOR_VERSION,
    TASKS,
    case_id,
    generate,
    generate_case,
    parse_split,
    resolve_split,
)

__all__ = [
    "GENERATOR_VERSION",
    "TASKS",
    "SynthCase",
    "case_id",
    "generate",
    "generate_case",
    "parse_split",
    "resolve_split",
    "write_ct_series",
]
