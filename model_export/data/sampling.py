"""Training and validation samples: 2D axial patches centred on the target (paper section 3).

Each item is one axial slice of one case, cropped to a ``patch_size`` window centred on a target: a
connected component of the mask for a strong case, a box of the manifest for a weak case. The centre
is moved by a random jitter (at most ``jitter * patch`` pixels along each axis) but the target box is
kept inside the window whenever it fits. Slices smaller than the patch are padded with the case's
lowest intensity (air in CT). The window is placed by the one crop policy (``msdn_core.crop``), the
jitter being an offset of its centre applied before the policy's clamp. Then come random horizontal
and vertical flips, normalisation by the training set's statistics (``msdn_core.card.Normalization``)
and additive Gaussian noise.

With ``away_fraction > 0`` that fraction of items is replaced by a window at a uniformly random
position of a uniformly random slice of the same case ("away" patches), meant to show the model the
rest of the body so it can run on whole slices (``msdn evaluate --region full``). They may by chance
still contain target; for weak cases they carry the boxes that fall inside. Measured effect
(docs/results/away): at the CPU budget, 0.5 lowered target-region Dice by about 3 points and did not
reduce false positives on whole slices; it is no substitute for longer training with whole-slice
validation.

Items (``PatchDataset[i]``)::

    {"image": (C, H, W) float32 normalised, "label": (H, W) int64 (zeros for weak cases),
     "strong": bool, "boxes": (G, 4) float32 [x1, y1, x2, y2] in patch pixels,
     "box_labels": (G,) int64 in 1..C, "case_id": str, "slice": int}

For strong items the boxes are the per-component boxes of the cropped, flipped label
(``box_mode="component"``) or, with ``box_mode="object"``, one box per 3D object (26-connected
component of the mask volume) projected to the slice: the box of all of that object's pixels in the
crop, even when they fall apart into several 2D pieces. For weak items the manifest boxes of that
slice, moved with the crop, flipped, clipped to the patch (boxes with less than one pixel left are
dropped).

Whole-series training (full-size cases, generator v5):

* ``away_cases="all"``: an away patch comes from a random case of the same kind (strong or weak) as
  the item's case, target-free cases included (they hold no target slice, so only away and
  hard-negative patches show them); ``"same"`` (default) keeps the item's own case.
* ``hard_negative_fraction``: that fraction of items is replaced by a window centred (jitter 1/8
  patch) on a "target-like" voxel away from every target: intensity within the 5th-95th percentile
  of the target voxels of the strong cases, in surroundings darker than that range (mean over about
  9 x 9 pixels below its low end, e.g. a vessel cross-section in lung) and at least 8 pixels outside
  every target box of slices within 2 slices. Candidates are found once per case on a grid subsampled
  by 2 (z, y, x); a case without candidates falls back to an away patch. The case is drawn like the
  away patches (``away_cases``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from model_export.data.manifest import Case
from model_export.data.volumes import read_volume
from msdn_core import geometry
from msdn_core.card import Normalization
from msdn_core.crop import Window, window_origin
from msdn_core.grid import ModelGrid

logger = logging.getLogger(__name__)


def compute_normalization(
    images: Iterable[Case | np.ndarray],
    *,
    clip: Sequence[float] | None = None,
    max_voxels_per_case: int = 4_000_000,
) -> Normalization:
    """Mean and standard deviation of all voxels of the training images (after ``clip``).

    Args:
        images: cases (their images are read) or image arrays.
        clip: optional (low, high) applied before the statistics (and stored with them).
        max_voxels_per_case: larger volumes are subsampled with a regular stride to this many voxels.

    Statistics are accumulated in float64.

    Raises:
        ValueError: no cases, or the images are constant.
    """
    total = 0
    s1 = 0.0
    s2 = 0.0
    for item in images:
        arr = (read_volume(item.image).array if isinstance(item, Case) else np.asarray(item)).ravel()
        if arr.size > max_voxels_per_case:
            arr = arr[:: math.ceil(arr.size / max_voxels_per_case)]
        arr = arr.astype(np.float64)
        if clip is not None:
            arr = np.clip(arr, clip[0], clip[1])
        total += arr.size
        s1 += float(arr.sum())
        s2 += float(np.square(arr).sum())
    if total == 0:
        raise ValueError("cannot compute normalisation statistics from no cases")
    mean = s1 / total
    std = math.sqrt(max(s2 / total - mean * mean, 0.0))
    if std <= 1e-8:
        raise ValueError("training images are constant: standard deviation is 0")
    return Normalization(mean, std, None if clip is None else (float(clip[0]), float(clip[1])))


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or (H, W), got {value!r}")
    return pair  # type: ignore[return-value]


BOX_MODES = ("component", "object")
AWAY_CASES = ("same", "all")
#: 26-connectivity for 3D objects
_CONN26 = np.ones((3, 3, 3), dtype=bool)


def object_boxes(objects: np.ndarray, object_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (G, 4) and labels (G,) of each object id present in a 2D object-id map (0 = none).

    ``object_class[i]`` is the class of object id i (index 0 unused).
    """
    boxes, labels = [], []
    for oid in np.unique(objects):
        if oid == 0:
            continue
        ys, xs = np.nonzero(objects == oid)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(int(object_class[oid]))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def label_objects(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3D objects of a (Z, Y, X) label volume: (object-id volume int32, class of each id (index 0 = 0))."""
    objects = np.zeros(mask.shape, dtype=np.int32)
    classes = [0]
    for value in np.unique(mask):
        if value == 0:
            continue
        comps, n = ndimage.label(mask == value, structure=_CONN26)
        sel = comps > 0
        objects[sel] = comps[sel] + (len(classes) - 1)
        classes += [int(value)] * n
    if len(classes) < 32767:  # keep memory low: most volumes have a handful of objects
        objects = objects.astype(np.int16)
    return objects, np.asarray(classes, dtype=np.int64)


def object_slice_boxes(objects: np.ndarray, object_class: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per slice z, the boxes and labels of the 3D objects it cuts (one box per object and slice)."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for z in np.flatnonzero(objects.reshape(objects.shape[0], -1).any(axis=1)):
        out[int(z)] = object_boxes(objects[z], object_class)
    return out


def component_boxes(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (G, 4) [x1, y1, x2, y2] and labels (G,) of each connected component of each class of a 2D label."""
    boxes, labels = [], []
    for value in np.unique(label):
        if value == 0:
            continue
        comps, _ = ndimage.label(label == value)
        for ys, xs in ndimage.find_objects(comps):
            boxes.append([xs.start, ys.start, xs.stop, ys.stop])
            labels.append(int(value))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


@dataclass
class _Volume:
    case: Case
    image: np.ndarray  # (Z, Y, X) float32, stored units
    mask: np.ndarray | None  # (Z, Y, X) uint8 / int16 labels, None for weak cases
    fill: float
    targets: dict[int, tuple[np.ndarray, np.ndarray]]  # slice -> (boxes (G, 4), labels (G,))
    objects: np.ndarray | None = None  # (Z, Y, X) 3D object ids (box_mode "object", strong cases)
    object_class: np.ndarray | None = None
    negatives: np.ndarray | None = None  # (K, 3) z, y, x hard-negative centres


def load_volume(case: Case, *, box_mode: str = "component", grid: ModelGrid | None = None) -> _Volume:
    """Read one case, bring it onto the model grid and index its target boxes per slice (per 2D
    component or per 3D object).

    The mask is matched to the image by geometry (``msdn_core.geometry.map_to_grid``: axis order and
    flips exactly, any other grid refused); with ``grid`` image, mask and boxes then go through the one
    canonical-grid step (``msdn_core.grid``) the service uses, so training sees what serving sees.
    """
    if box_mode not in BOX_MODES:
        raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r}")
    native = read_volume(case.image)
    transform = (grid or ModelGrid()).transform_for(native)
    image = transform.to_model(native.array) if not transform.identity else native.array.astype(np.float32)
    mask = None
    targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    objects = object_class = None
    if case.strong:
        mask_vol = read_volume(case.mask, dtype=np.int16)
        mask_arr = geometry.map_to_grid(
            mask_vol.array, mask_vol.affine, native.shape, native.affine, what=f"case {case.id}: mask"
        )
        if mask_arr.min() < 0 or mask_arr.max() > 255:
            raise ValueError(f"case {case.id}: mask labels must be 0..255, got {mask_arr.min()}..{mask_arr.max()}")
        mask = transform.labels_to_model(mask_arr)
        if box_mode == "object":
            objects, object_class = label_objects(mask)
            targets = object_slice_boxes(objects, object_class)
        else:
            for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
                targets[int(z)] = component_boxes(mask[z])
    else:
        for b in transform.slice_boxes_to_model(case.boxes):
            boxes, labels = targets.get(b.z, (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)))
            targets[b.z] = (
                np.concatenate([boxes, np.asarray([b.box], np.float32)]),
                np.concatenate([labels, np.asarray([b.label], np.int64)]),
            )
        targets = {z: t for z, t in targets.items() if 0 <= z < image.shape[0]}
    return _Volume(case, image, mask, float(image.min()), targets, objects, object_class)


def target_intensity_range(volumes: Sequence[_Volume]) -> tuple[float, float] | None:
    """5th and 95th percentile of the image inside the masks of the strong volumes (None: no target voxel)."""
    values = [v.image[v.mask > 0] for v in volumes if v.mask is not None and v.mask.any()]
    if not values:
        return None
    allv = np.concatenate(values)
    if allv.size > 200_000:
        allv = allv[:: allv.size // 200_000]
    lo, hi = np.percentile(allv, [5, 95])
    return float(lo), float(hi)


def hard_negative_centres(
    vol: _Volume, value_range: tuple[float, float], *, limit: int = 4000, seed: int = 0
) -> np.ndarray:
    """(K, 3) voxel centres (z, y, x) of target-like structures away from every target (module docstring)."""
    lo, hi = value_range
    sub = vol.image[::2, ::2, ::2]
    local = ndimage.uniform_filter(sub, size=(1, 5, 5), mode="nearest")
    cand = (sub >= lo) & (sub <= hi) & (local < lo)
    zs, ys, xs = np.nonzero(cand)
    pts = np.stack([zs * 2, ys * 2, xs * 2], axis=1)
    if len(pts) and vol.targets:
        keep = np.ones(len(pts), dtype=bool)
        for z, (boxes, _) in vol.targets.items():
            near = np.abs(pts[:, 0] - z) <= 2
            for x1, y1, x2, y2 in boxes:
                inside = (pts[:, 2] >= x1 - 8) & (pts[:, 2] < x2 + 8) & (pts[:, 1] >= y1 - 8) & (pts[:, 1] < y2 + 8)
                keep &= ~(near & inside)
        pts = pts[keep]
    if len(pts) > limit:
        rng = np.random.default_rng([seed, len(pts)])
        pts = pts[np.sort(rng.choice(len(pts), limit, replace=False))]
    return pts.astype(np.int64)


class PatchDataset(Dataset):
    """Target-centred 2D patches of a list of cases (see module docstring).

    Randomness comes from a generator seeded by ``(seed, epoch, index)``: the same item of the same epoch
    is identical whatever the number of loader workers or processes. Call ``set_epoch`` once per epoch.

    Args:
        cases: strong and/or weak cases (all are loaded into memory).
        normalization: the training set's statistics.
        patch_size: patch (H, W) or one int; multiples of 16 for the networks.
        augment: jitter, flips and noise (training); False gives deterministic centred crops
            (validation) - the window is then centred on the union of the slice's target boxes.
        jitter: largest centre shift as a fraction of the patch size.
        flip: random horizontal and vertical flips (each with probability 0.5).
        noise_std: standard deviation of additive Gaussian noise in normalised units (0 disables).
        noise_prob: probability of adding noise to an item.
        away_fraction: fraction of items replaced by patches at random positions (0 = paper).
        hard_negative_fraction: fraction of items replaced by hard-negative windows (0 = paper).
        away_cases: ``same`` or ``all`` (where away and hard-negative patches come from).
        box_mode: ``component`` (a box per 2D connected component) or ``object`` (per 3D object).
        extra_cases: further cases (e.g. target-free ones) used only by away / hard-negative patches.
        seed: base seed.
        volumes: already loaded volumes to reuse (from another dataset's ``volumes``).
        grid: the model grid every case is brought onto (``msdn_core.grid``; None: each case's own).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        *,
        normalization: Normalization,
        patch_size: int | Sequence[int] = 128,
        augment: bool = True,
        jitter: float = 0.25,
        flip: bool = True,
        noise_std: float = 0.05,
        noise_prob: float = 0.5,
        away_fraction: float = 0.0,
        hard_negative_fraction: float = 0.0,
        away_cases: str = "same",
        box_mode: str = "component",
        seed: int = 0,
        volumes: dict[str, _Volume] | None = None,
        grid: ModelGrid | None = None,
    ):
        self.patch = _pair("patch_size", patch_size)
        if away_cases not in AWAY_CASES:
            raise ValueError(f"away_cases must be one of {AWAY_CASES}, got {away_cases!r}")
        if box_mode not in BOX_MODES:
            raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r}")
        for name, value, top in (
            ("jitter", jitter, 0.5),
            ("noise_prob", noise_prob, 1.0),
            ("away_fraction", away_fraction, 1.0),
            ("hard_negative_fraction", hard_negative_fraction, 1.0),
        ):
            if not (isinstance(value, (int, float)) and 0.0 <= value <= top):
                raise ValueError(f"{name} must be in [0, {top}], got {value!r}")
        if away_fraction + hard_negative_fraction > 1.0 + 1e-9:
            raise ValueError(
                f"away_fraction + hard_negative_fraction must be <= 1, got {away_fraction} + {hard_negative_fraction}"
            )
        if not (isinstance(noise_std, (int, float)) and noise_std >= 0):
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        if not cases:
            raise ValueError("cases must not be empty")
        self.normalization = normalization
        self.augment = augment
        self.jitter = float(jitter)
        self.flip = flip
        self.noise_std = float(noise_std)
        self.noise_prob = float(noise_prob)
        self.away_fraction = float(away_fraction)
        self.hard_negative_fraction = float(hard_negative_fraction)
        self.away_cases = away_cases
        self.box_mode = box_mode
        self.seed = int(seed)
        self.grid = grid
        self.epoch = 0
        volumes = dict(volumes or {})
        self.volumes: list[_Volume] = []
        self.items: list[tuple[int, int]] = []  # (volume index, slice)
        for case in cases:
            vol = volumes.get(case.id)
            if (
                vol is None
                or vol.case.strong != case.strong
                or (box_mode == "object" and vol.objects is None and case.strong)
            ):
                vol = load_volume(case, box_mode=box_mode, grid=grid)
            if not vol.targets:
                logger.info("case %s has no target slice; only away / hard-negative patches show it", case.id)
            self.volumes.append(vol)
            self.items += [(len(self.volumes) - 1, z) for z in sorted(vol.targets)]
        if not self.items:
            raise ValueError("no case has a target slice (empty masks and no boxes)")
        self._by_kind = {
            kind: [i for i, v in enumerate(self.volumes) if v.case.strong == kind] for kind in (True, False)
        }
        self.target_range = None
        if self.hard_negative_fraction > 0:
            self.target_range = target_intensity_range(self.volumes)
            for i, vol in enumerate(self.volumes):
                if vol.negatives is None and self.target_range is not None:
                    vol.negatives = hard_negative_centres(vol, self.target_range, seed=self.seed + i)

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def strong_flags(self) -> np.ndarray:
        """(len,) bool: whether each item comes from a strong case."""
        return np.array([self.volumes[v].case.strong for v, _ in self.items], dtype=bool)

    def _other_volume(self, vi: int, rng: np.random.Generator) -> int:
        if self.away_cases == "same":
            return vi
        pool = self._by_kind[self.volumes[vi].case.strong]
        return pool[int(rng.integers(len(pool)))]

    def _window(self, vol: _Volume, z: int, rng: np.random.Generator, away: bool) -> tuple[int, int, int]:
        ph, pw = self.patch
        _, h, w = vol.image.shape
        if away == "hard":
            c = vol.negatives[int(rng.integers(len(vol.negatives)))]
            cy = c[1] + rng.uniform(-1, 1) * ph / 8
            cx = c[2] + rng.uniform(-1, 1) * pw / 8
            y0 = min(max(round(cy - ph / 2), min(0, h - ph)), max(0, h - ph))
            x0 = min(max(round(cx - pw / 2), min(0, w - pw)), max(0, w - pw))
            return int(c[0]), y0, x0
        if away:
            z = int(rng.integers(vol.image.shape[0]))
            y0 = int(rng.integers(min(0, h - ph), max(0, h - ph) + 1))
            x0 = int(rng.integers(min(0, w - pw), max(0, w - pw) + 1))
            return z, y0, x0
        boxes, _ = vol.targets[z]
        if self.augment:
            box = boxes[int(rng.integers(len(boxes)))]
        else:
            box = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
        dx = dy = 0.0
        if self.augment and self.jitter > 0:
            dx = rng.uniform(-1, 1) * self.jitter * pw
            dy = rng.uniform(-1, 1) * self.jitter * ph
        # The one crop policy (msdn_core.crop), the jitter an offset applied before its clamp.
        y0 = window_origin(box[1], box[3], size=h, window=ph, offset=dy)
        x0 = window_origin(box[0], box[2], size=w, window=pw, offset=dx)
        return z, y0, x0

    def __getitem__(self, index: int) -> dict[str, Any]:
        vi, z = self.items[index]
        vol = self.volumes[vi]
        ph, pw = self.patch
        rng = np.random.default_rng([self.seed, self.epoch, index])
        away: bool | str = False
        if self.augment and (self.away_fraction > 0 or self.hard_negative_fraction > 0):
            u = rng.random()
            if u < self.away_fraction:
                away = True
            elif u < self.away_fraction + self.hard_negative_fraction:
                away = "hard"
            if away:
                vi = self._other_volume(vi, rng)
                vol = self.volumes[vi]
                if away == "hard" and (vol.negatives is None or not len(vol.negatives)):
                    away = True
        z, y0, x0 = self._window(vol, z, rng, away)
        window = Window(y0, x0, ph, pw)
        image = window.extract(vol.image[z], vol.fill)
        strong = vol.mask is not None
        objects = None
        if strong:
            label = window.extract(vol.mask[z], 0).astype(np.int64)
            if vol.objects is not None:
                objects = window.extract(vol.objects[z], 0)
        else:
            label = np.zeros((ph, pw), dtype=np.int64)
            boxes, labels = vol.targets.get(z, (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)))
            boxes = boxes - np.array([x0, y0, x0, y0], dtype=np.float32)
            boxes = np.clip(boxes, 0, [pw, ph, pw, ph]).astype(np.float32)
        flip_x = self.augment and self.flip and rng.random() < 0.5
        flip_y = self.augment and self.flip and rng.random() < 0.5
        if flip_x:
            image, label = image[:, ::-1], label[:, ::-1]
            objects = None if objects is None else objects[:, ::-1]
        if flip_y:
            image, label = image[::-1], label[::-1]
            objects = None if objects is None else objects[::-1]
        if strong:
            if objects is not None:
                boxes, labels = object_boxes(objects, vol.object_class)
            else:
                boxes, labels = component_boxes(label)
        else:
            if flip_x:
                boxes = np.stack([pw - boxes[:, 2], boxes[:, 1], pw - boxes[:, 0], boxes[:, 3]], axis=1)
            if flip_y:
                boxes = np.stack([boxes[:, 0], ph - boxes[:, 3], boxes[:, 2], ph - boxes[:, 1]], axis=1)
            keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
            boxes, labels = boxes[keep].astype(np.float32), labels[keep]
        image = self.normalization.apply(image)
        if self.augment and self.noise_std > 0 and rng.random() < self.noise_prob:
            image = image + rng.normal(0.0, self.noise_std, size=image.shape).astype(np.float32)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)[None]),
            "label": torch.from_numpy(np.ascontiguousarray(label)),
            "strong": strong,
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "box_labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            "case_id": vol.case.id,
            "slice": z,
        }


def collate_patches(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch ``PatchDataset`` items.

    Returns:
        ``image`` (B, C, H, W), ``label`` (B, H, W), ``strong`` (B,) bool, ``targets`` list of
        ``{"boxes": (G, 4), "labels": (G,)}``, ``case_ids`` and ``slices`` lists.
    """
    return {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.stack([it["label"] for it in items]),
        "strong": torch.tensor([bool(it["strong"]) for it in items], dtype=torch.bool),
        "targets": [{"boxes": it["boxes"], "labels": it["box_labels"]} for it in items],
        "case_ids": [it["case_id"] for it in items],
        "slices": [int(it["slice"]) for it in items],
    }
