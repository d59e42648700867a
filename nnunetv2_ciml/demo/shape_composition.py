"""ShapeComposition: a multimodal segmentation dataset whose information structure is known voxel by voxel.

Task: segment *circles* (label 1) and *squares* (label 2); balls and cubes in 3D. The decomposition
(``"ciml"`` block of dataset.json) gives modality ``A`` the subtask ``circle`` (outputs background and
circle) and modality ``B`` the subtask ``square``.

Every object is drawn in its primary modality (circles in A, squares in B) with amplitude ~1 (+-20 %,
per object) in one of two *styles*: ``solid`` or ``hollow`` (the inner half of the radius left empty;
the label still covers the whole shape). Three kinds of information:

- **private**: true objects are solid or hollow; decoys are always hollow. A solid object is therefore
  always a true one, and its primary modality alone segments it.
- **redundant**: every other modality shows a weak (``redundant_amplitude``, ~0.4), noisy, solid copy of
  every *true* object: what the primary modality shows, again.
- **complementary**: in a *complementary case* each subtask gets ``pairs_per_subtask`` (decoy, twin) pairs:
  a hollow decoy and a hollow true object (its *twin*) with the same radius and amplitude. Their
  positions are drawn one after the other in random order, so decoy and twin share one position
  distribution. In the primary modality the two are the same pattern shifted (identical without noise),
  so no function of the primary modality can tell them apart better than chance; only the other
  modality, which shows the twin's weak copy and nothing at the decoy, can. The *complementary mask* is the union of the
  footprints of decoys and their twins, valued with the label of the subtask that needs the information
  (1 for circles, 2 for squares), 0 elsewhere. Outside it, the primary modality alone determines the label.

``num_modalities=3`` adds a modality ``C`` that owns no subtask (like T1/T2 in BraTS); then A and B show
weak copies of *all* of each other's objects (decoys included: purely redundant) and only C shows the
weak copies of true objects, so that every subtask's complementary information comes from C alone.

With 2 modalities and softmax training, note that the background logit belongs to subtask ``circle``
(primary A), and A shows which squares are true: a no-message model can still reject square decoys
through the softmax competition with A's background logit; circle decoys it cannot resolve.

Layout written by :func:`generate_shape_composition` (``CASE`` is ``train_000``, ``test_000``, ...)::

    out_dir/                                 e.g. $nnUNet_raw/Dataset990_ShapeComposition
        dataset.json                         nnU-Net's, with "ciml" and "shape_composition" blocks
        objects.json                         per case: complementary flag and object list
        imagesTr/CASE_0000.nii.gz            modality A (_0001: B, _0002: C)
        labelsTr/CASE.nii.gz                 0 background, 1 circle, 2 square (uint8)
        complementaryTr/CASE.nii.gz          0, or the label whose subtask needs complementary information
        imagesTs/, labelsTs/, complementaryTs/   the same for held-out cases

Placement: objects never overlap and keep ``GAP`` (2) voxels of background between them; each centre is
drawn uniformly from all free positions. Pairs are placed first (a layout without room for them is
redrawn); solid objects that find no room are left out, so complementary cases hold fewer solid objects
(at the defaults 2.3 on average against 3.0).

Geometry: spacing 1 mm, origin 0, identity direction. 2D cases are stored as NIfTI with a singleton
first array axis (SimpleITK array shape ``(1, Y, X)``), which nnU-Net plans as a ``2d`` configuration
only. ``size`` is in array order: ``(Y, X)`` or ``(Z, Y, X)``.

Determinism: case ``i`` of a split depends only on ``(seed, split, i)`` and the generator's parameters,
not on the number of cases; which cases are complementary is fixed by ``complementary_fraction``
(exactly ``floor(n * fraction)`` of the first ``n`` cases). ``noise=0`` gives noise-free images with the
same geometry, for verification. Noise is white Gaussian with standard deviation ``noise``, added to
every voxel of every modality (so no channel has a zero background that nnU-Net would crop away).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

LABELS: Dict[str, int] = {"background": 0, "circle": 1, "square": 2}
KINDS: Tuple[str, ...] = ("circle", "square")  # KINDS[k] is label k + 1, drawn in modality k
FILE_ENDING = ".nii.gz"
SPLITS = {"Tr": "train", "Ts": "test"}
MAX_LAYOUT_TRIES = 100
GAP = 2  # voxels of background kept between objects so that footprints never touch
AMPLITUDE_JITTER = 0.2


@dataclass(frozen=True)
class ShapeCompositionSpec:
    """Generator parameters (stored in dataset.json under ``"shape_composition"``).

    ``size``: array shape (Y, X) or (Z, Y, X), voxels of 1 mm. ``radius``: (min, max) in voxels, drawn
    per object (half the side for squares). ``solid_per_subtask``: (min, max) solid true objects per
    subtask and case. ``noise``: standard deviation of the white noise (object amplitude ~1).
    ``redundant_amplitude``: amplitude of the weak copies, relative to the object's.
    """

    size: Tuple[int, ...] = (64, 64)
    radius: Tuple[int, int] = (5, 10)
    solid_per_subtask: Tuple[int, int] = (1, 2)
    pairs_per_subtask: int = 1
    complementary_fraction: float = 0.5
    noise: float = 0.2
    redundant_amplitude: float = 0.4
    num_modalities: int = 2

    def __post_init__(self):
        if len(self.size) not in (2, 3) or min(self.size) < 1:
            raise ValueError(f"size must be 2 or 3 positive ints (array order), got {self.size}")
        lo, hi = self.radius
        if not 1 <= lo <= hi:
            raise ValueError(f"radius must be (min, max) with 1 <= min <= max, got {self.radius}")
        if min(self.size) < 2 * (hi + GAP) + 1:
            raise ValueError(f"size {self.size} is too small for radius up to {hi}: every axis needs at least "
                             f"{2 * (hi + GAP) + 1} voxels")
        if not 0 <= self.solid_per_subtask[0] <= self.solid_per_subtask[1]:
            raise ValueError(f"solid_per_subtask must be (min, max), got {self.solid_per_subtask}")
        if self.pairs_per_subtask < 1:
            raise ValueError(f"pairs_per_subtask must be >= 1, got {self.pairs_per_subtask}")
        if not 0.0 <= self.complementary_fraction <= 1.0:
            raise ValueError(f"complementary_fraction must lie in [0, 1], got {self.complementary_fraction}")
        if self.noise < 0 or self.redundant_amplitude <= 0:
            raise ValueError(f"need noise >= 0 and redundant_amplitude > 0, got {self.noise}, {self.redundant_amplitude}")
        if self.num_modalities not in (2, 3):
            raise ValueError(f"num_modalities must be 2 or 3, got {self.num_modalities}")

    @property
    def modalities(self) -> Tuple[str, ...]:
        return ("A", "B", "C")[:self.num_modalities]


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object. ``center`` in voxels (array order); ``twin``: index of the other member of its
    (decoy, twin) pair in the case's object list, or -1."""

    kind: str
    role: str  # "true" or "decoy"
    style: str  # "solid" or "hollow"
    center: Tuple[int, ...]
    radius: int
    amplitude: float
    twin: int = -1

    @property
    def label(self) -> int:
        return LABELS[self.kind]


@dataclass
class ShapeCompositionCase:
    """One case in memory: ``images`` (C, *spatial) float32, ``label`` and ``complementary`` (*spatial) uint8."""

    images: np.ndarray
    label: np.ndarray
    complementary: np.ndarray
    objects: List[ShapeObject]
    is_complementary: bool


def footprint(kind: str, center: Sequence[int], radius: float, size: Sequence[int]) -> np.ndarray:
    """Boolean mask (*size) of a disc/ball (``circle``) or square/cube (``square``) of ``radius``
    (half side for squares) around ``center``."""
    grid = np.ogrid[tuple(slice(0, s) for s in size)]
    offsets = [np.abs(g - c) for g, c in zip(grid, center)]
    if kind == "circle":
        # (r + 0.5)^2 rather than r^2: no single-voxel nubs at the poles, and the extent stays center +- r
        return sum(o.astype(np.float64) ** 2 for o in offsets) < (radius + 0.5) ** 2
    inside = np.ones(tuple(size), dtype=bool)
    for o in offsets:
        inside &= o <= radius
    return inside


def _appearance(obj: ShapeObject, size: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """(footprint, voxels drawn in the primary modality)."""
    full = footprint(obj.kind, obj.center, obj.radius, size)
    if obj.style == "solid":
        return full, full
    return full, full & ~footprint(obj.kind, obj.center, obj.radius / 2, size)


def is_complementary_case(index: int, fraction: float) -> bool:
    """Whether case ``index`` of a split contains (decoy, twin) pairs: the first ``n`` cases hold exactly
    ``floor(n * fraction)`` complementary ones, spread evenly."""
    return math.floor((index + 1) * fraction + 1e-9) > math.floor(index * fraction + 1e-9)


def _place(rng: np.random.Generator, kind: str, radius: int, occupied: np.ndarray) -> Optional[Tuple[int, ...]]:
    """A centre drawn uniformly from all centres where the object lies inside the image and touches no
    ``occupied`` voxel; marks the object, grown by ``GAP``, in ``occupied``. None if there is no room."""
    size = occupied.shape
    if occupied.any():
        # distance to the nearest occupied voxel in the metric of the object's footprint
        if kind == "circle":
            free = ndimage.distance_transform_edt(~occupied) >= radius + 0.5
        else:
            free = ndimage.distance_transform_cdt(~occupied, metric="chessboard") > radius
    else:
        free = np.ones(size, dtype=bool)
    inside = np.zeros(size, dtype=bool)
    inside[tuple(slice(radius, s - radius) for s in size)] = True
    candidates = np.flatnonzero(free & inside)
    if candidates.size == 0:
        return None
    center = tuple(int(i) for i in np.unravel_index(candidates[rng.integers(candidates.size)], size))
    occupied |= footprint(kind, center, radius + GAP, size)
    return center


def _amplitude(rng: np.random.Generator) -> float:
    return float(1.0 + AMPLITUDE_JITTER * rng.uniform(-1.0, 1.0))


def _place_pairs(rng: np.random.Generator, spec: ShapeCompositionSpec,
                 occupied: np.ndarray) -> Optional[List[ShapeObject]]:
    """The (decoy, twin) pairs of a complementary case, or None if one finds no room. Members are placed
    in random order so that decoys and twins share one position distribution."""
    objects: List[ShapeObject] = []
    for kind in KINDS:
        for _ in range(spec.pairs_per_subtask):
            radius, amp = int(rng.integers(spec.radius[0], spec.radius[1] + 1)), _amplitude(rng)
            roles = ("true", "decoy") if rng.random() < 0.5 else ("decoy", "true")
            for j, role in enumerate(roles):
                center = _place(rng, kind, radius, occupied)
                if center is None:
                    return None
                twin = len(objects) + 1 if j == 0 else len(objects) - 1
                objects.append(ShapeObject(kind, role, "hollow", center, radius, amp, twin))
    return objects


def sample_objects(rng: np.random.Generator, spec: ShapeCompositionSpec, complementary: bool) -> List[ShapeObject]:
    """Objects of one case: the pairs first (a layout where one finds no room is redrawn), then the solid
    true objects (one that finds no room is left out)."""
    for _ in range(MAX_LAYOUT_TRIES):
        occupied = np.zeros(spec.size, dtype=bool)
        objects = _place_pairs(rng, spec, occupied) if complementary else []
        if objects is None:
            continue
        for kind in KINDS:
            for _ in range(int(rng.integers(spec.solid_per_subtask[0], spec.solid_per_subtask[1] + 1))):
                radius, amp = int(rng.integers(spec.radius[0], spec.radius[1] + 1)), _amplitude(rng)
                center = _place(rng, kind, radius, occupied)
                if center is not None:
                    objects.append(ShapeObject(kind, "true", "solid", center, radius, amp))
        return objects
    raise ValueError(f"no room for {spec.pairs_per_subtask} (decoy, twin) pair(s) per subtask of radius up to "
                     f"{spec.radius[1]} in size {spec.size} after {MAX_LAYOUT_TRIES} layouts; use a larger size or "
                     "smaller radius")


def render_case(objects: Sequence[ShapeObject], spec: ShapeCompositionSpec,
                rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (C, *size) float32, label and complementary mask (*size) uint8 of ``objects``.
    ``rng`` draws the noise (none when ``spec.noise == 0``)."""
    images = np.zeros((spec.num_modalities, *spec.size), dtype=np.float32)
    label = np.zeros(spec.size, dtype=np.uint8)
    complementary = np.zeros(spec.size, dtype=np.uint8)
    for obj in objects:
        full, drawn = _appearance(obj, spec.size)
        primary = KINDS.index(obj.kind)
        weak = np.float32(spec.redundant_amplitude * obj.amplitude)
        images[primary][drawn] += np.float32(obj.amplitude)
        if spec.num_modalities == 2:
            if obj.role == "true":
                images[1 - primary][full] += weak
        else:
            images[1 - primary][full] += weak
            if obj.role == "true":
                images[2][full] += weak
        if obj.role == "true":
            label[full] = obj.label
        if obj.twin >= 0:
            complementary[full] = obj.label
    if spec.noise > 0:
        if rng is None:
            raise ValueError("render_case needs an rng when spec.noise > 0")
        images += (spec.noise * rng.standard_normal(images.shape)).astype(np.float32)
    return images, label, complementary


def make_case(spec: ShapeCompositionSpec, seed: int, split: str, index: int) -> ShapeCompositionCase:
    """Case ``index`` of ``split`` (``"Tr"`` or ``"Ts"``) for ``seed``; a pure function of its arguments."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([int(seed), list(SPLITS).index(split), int(index)])
    complementary = is_complementary_case(index, spec.complementary_fraction)
    objects = sample_objects(rng, spec, complementary)
    images, label, mask = render_case(objects, spec, rng)
    return ShapeCompositionCase(images, label, mask, objects, bool(mask.any()))


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array[None] if array.ndim == 2 else array)
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        ours = False
        try:
            ours = "shape_composition" in json.loads((out_dir / "dataset.json").read_text())
        except (OSError, ValueError):
            pass
        if not (overwrite and ours):
            raise FileExistsError(
                f"{out_dir} exists and is not empty; "
                + ("it is not a ShapeComposition dataset, so it is left untouched" if overwrite and not ours
                   else "pass overwrite=True to replace a ShapeComposition dataset there"))
        for split in SPLITS:
            for prefix in ("images", "labels", "complementary"):
                shutil.rmtree(out_dir / f"{prefix}{split}", ignore_errors=True)
        for name in ("dataset.json", "objects.json"):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def generate_shape_composition(out_dir: Union[str, Path], num_train: int = 60, num_test: int = 20,
                               size: Union[int, Sequence[int]] = 64, dim: Optional[int] = None, seed: int = 0,
                               radius: Tuple[int, int] = (5, 10), noise: float = 0.2,
                               redundant_amplitude: float = 0.4, complementary_fraction: float = 0.5,
                               solid_per_subtask: Tuple[int, int] = (1, 2), pairs_per_subtask: int = 1,
                               num_modalities: int = 2, overwrite: bool = False) -> Path:
    """Write a ShapeComposition nnU-Net raw dataset to ``out_dir`` (the ``DatasetXXX_Name`` folder itself)
    and return its path. ``size``: an int (a square/cube of ``dim`` axes, default 2) or the array shape.
    Refuses a non-empty ``out_dir`` unless ``overwrite`` and it holds a ShapeComposition dataset."""
    if isinstance(size, (int, np.integer)):
        size = (int(size),) * (dim or 2)
    elif dim is not None and len(size) != dim:
        raise ValueError(f"size {tuple(size)} has {len(size)} axes but dim={dim}")
    if num_train < 1 or num_test < 0:
        raise ValueError(f"need num_train >= 1 and num_test >= 0, got {num_train}, {num_test}")
    spec = ShapeCompositionSpec(tuple(int(s) for s in size), tuple(radius), tuple(solid_per_subtask),
                                int(pairs_per_subtask), float(complementary_fraction), float(noise),
                                float(redundant_amplitude), int(num_modalities))
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)

    objects_record: Dict[str, dict] = {}
    for split, prefix in SPLITS.items():
        n = num_train if split == "Tr" else num_test
        if n == 0:
            continue
        folders = {p: out_dir / f"{p}{split}" for p in ("images", "labels", "complementary")}
        for folder in folders.values():
            folder.mkdir()
        for i in range(n):
            case_id = f"{prefix}_{i:03d}"
            case = make_case(spec, seed, split, i)
            for c, image in enumerate(case.images):
                _write(image, folders["images"] / f"{case_id}_{c:04d}{FILE_ENDING}")
            _write(case.label, folders["labels"] / f"{case_id}{FILE_ENDING}")
            _write(case.complementary, folders["complementary"] / f"{case_id}{FILE_ENDING}")
            objects_record[case_id] = {"split": split, "complementary": case.is_complementary,
                                       "objects": [asdict(o) for o in case.objects]}
    (out_dir / "objects.json").write_text(json.dumps(objects_record, indent=1))

    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    # Without its primary, a subtask reads C first (weak copies of the true objects only), then the other primary
    # (weak copies of every object of the subtask, decoys included).
    others = {"A": [m for m in ("C", "B") if m in spec.modalities], "B": [m for m in ("C", "A") if m in spec.modalities]}
    subtasks = {"circle": {"primary": "A", "outputs": ["background", "circle"], "fallbacks": others["A"]},
                "square": {"primary": "B", "outputs": ["square"], "fallbacks": others["B"]}}
    generate_dataset_json(
        str(out_dir), channel_names=dict(enumerate(spec.modalities)), labels=dict(LABELS),
        num_training_cases=num_train, file_ending=FILE_ENDING, dataset_name="ShapeComposition",
        description="Synthetic multimodal data with known private, redundant and complementary information "
                    "(nnunetv2_ciml.demo.shape_composition)",
        license="CC0-1.0 (synthetic)", converted_by="nnunetv2_ciml",
        ciml={"subtasks": subtasks},
        shape_composition={**asdict(spec), "seed": int(seed), "numTest": int(num_test),
                           "complementary_folders": {s: f"complementary{s}" for s in SPLITS},
                           "objects_file": "objects.json"})
    return out_dir


def _read(path: Path) -> np.ndarray:
    from nnunetv2_ciml.image_io import read_image_array
    return read_image_array(path)


def information_structure(dataset_dir: Union[str, Path]) -> Dict[str, dict]:
    """What the written masks say, per split (``"Tr"``, ``"Ts"``) that exists:

    - ``num_cases``, ``complementary_cases`` (ids with a non-empty mask), ``complementary_case_share``;
    - ``complementary_area_share``: mean over cases of the fraction of voxels inside the mask;
    - ``complementary_area_share_in_complementary_cases``: the same over complementary cases only;
    - ``label_share_needing_complementary``: per label, the fraction of its voxels inside the mask;
    - ``decoy_share_of_mask``: the fraction of mask voxels that are background (decoys).
    """
    dataset_dir = Path(dataset_dir)
    result: Dict[str, dict] = {}
    for split in SPLITS:
        mask_dir = dataset_dir / f"complementary{split}"
        if not mask_dir.is_dir():
            continue
        areas: Dict[str, float] = {}
        label_voxels = {k: 0 for k in KINDS}
        label_inside = {k: 0 for k in KINDS}
        mask_voxels = decoy_voxels = 0
        for mask_path in sorted(mask_dir.glob(f"*{FILE_ENDING}")):
            case_id = mask_path.name[:-len(FILE_ENDING)]
            label_path = dataset_dir / f"labels{split}" / mask_path.name
            if not label_path.is_file():
                raise FileNotFoundError(f"{dataset_dir}: case {case_id} has a complementary mask but no label "
                                        f"{label_path}")
            mask, label = _read(mask_path) > 0, _read(label_path)
            if mask.shape != label.shape:
                raise ValueError(f"{dataset_dir}: case {case_id}: mask shape {mask.shape} != label shape {label.shape}")
            areas[case_id] = float(mask.mean())
            for kind in KINDS:
                voxels = label == LABELS[kind]
                label_voxels[kind] += int(voxels.sum())
                label_inside[kind] += int((voxels & mask).sum())
            mask_voxels += int(mask.sum())
            decoy_voxels += int((mask & (label == 0)).sum())
        if not areas:
            continue
        comp = [c for c, a in areas.items() if a > 0]
        result[split] = {
            "num_cases": len(areas),
            "complementary_cases": comp,
            "complementary_case_share": len(comp) / len(areas),
            "complementary_area_share": float(np.mean(list(areas.values()))),
            "complementary_area_share_in_complementary_cases": float(np.mean([areas[c] for c in comp])) if comp else 0.0,
            "label_share_needing_complementary": {k: label_inside[k] / label_voxels[k] if label_voxels[k] else 0.0
                                                  for k in KINDS},
            "decoy_share_of_mask": decoy_voxels / mask_voxels if mask_voxels else 0.0,
        }
    return result
