"""Time HD95 on 240 x 240 x 155 mask pairs; compare with ``medpy.metric.binary.hd95`` if importable.

Pairs: the whole-tumour and tumour-core regions of two teams' segmentations of the real BraTS case
(``isen-20`` vs ``hnfnetv1-20``; ``--case``, by default the repository's cropped copy in ``tests/data``,
placed back into the full 240 x 240 x 155 grid at its crop box) and, as a worst
case, two offset ellipsoids about the size of a brain (a large bounding box). Reports the median
of ``--repeats`` runs and checks that the implementations give the same value. For reference it
also times the alternative we did not take: Euclidean distance transforms of the bounding box
(``scipy.ndimage.distance_transform_edt``) instead of k-d tree queries between surface voxels.

    python benchmarks/bench_hd95.py [--repeats 5] [--case DIR]
"""
import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from scipy.ndimage import distance_transform_edt

from nnunetv2_ciml.evaluation.surface_distance import _as_pair, hd95, surface_mask

SHAPE = (155, 240, 240)  # (Z, Y, X), 1 mm
CASE = Path(__file__).resolve().parents[1] / "tests" / "data" / "brats_TCGA-DU-7294"


def _full_size(case: Path, name: str) -> np.ndarray:
    """A segmentation as a (Z, Y, X) array on the full BraTS grid (a cropped copy goes back to its box)."""
    import json

    import SimpleITK as sitk
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(case / name)))
    if array.shape == SHAPE:
        return array
    box = json.loads((case / "crop.json").read_text())
    full = np.zeros(SHAPE, array.dtype)
    full[tuple(slice(a, b) for a, b in box["numpy_slices_zyx"])] = array
    return full


def mask_pairs(case: Path):
    pairs = {}
    if (case / "isen-20.nii.gz").is_file():
        ref, pred = _full_size(case, "isen-20.nii.gz"), _full_size(case, "hnfnetv1-20.nii.gz")
        pairs["BraTS WT (isen-20 vs hnfnetv1-20)"] = (np.isin(ref, (1, 2, 4)), np.isin(pred, (1, 2, 4)))
        pairs["BraTS TC (isen-20 vs hnfnetv1-20)"] = (np.isin(ref, (1, 4)), np.isin(pred, (1, 4)))
    else:
        print(f"no BraTS case at {case}; synthetic pair only")
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    ellipsoid = lambda cz, cy, cx: ((z - cz) / 60) ** 2 + ((y - cy) / 85) ** 2 + ((x - cx) / 70) ** 2 <= 1
    pairs["brain-sized ellipsoids, offset 4 voxels"] = (ellipsoid(77, 120, 120), ellipsoid(79, 123, 121))
    return pairs


def hd95_with_box_edt(a, b):
    """The same HD95 with distance transforms of the cropped box instead of k-d trees."""
    a, b, spacing = _as_pair(a, b, (1.0, 1.0, 1.0))
    sa, sb = surface_mask(a), surface_mask(b)
    d_ab = distance_transform_edt(~sb, sampling=spacing)[sa]
    d_ba = distance_transform_edt(~sa, sampling=spacing)[sb]
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


def timed(fn, repeats):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--case", type=Path, default=CASE, help="folder with isen-20.nii.gz and hnfnetv1-20.nii.gz")
    args = parser.parse_args()
    try:
        from medpy.metric.binary import hd95 as medpy_hd95
    except ImportError:
        medpy_hd95 = None
        print("medpy not importable: no comparison")
    for name, (a, b) in mask_pairs(args.case).items():
        ours, t_ours = timed(lambda: hd95(a, b, (1.0, 1.0, 1.0)), args.repeats)
        line = (f"{name}: {np.count_nonzero(a)} / {np.count_nonzero(b)} voxels, HD95 {ours:.4f} mm, "
                f"nnunetv2_ciml {t_ours * 1000:.1f} ms")
        box_edt, t_edt = timed(lambda: hd95_with_box_edt(a, b), args.repeats)
        line += f", box EDT {t_edt * 1000:.1f} ms (same: {np.isclose(ours, box_edt)})"
        if medpy_hd95 is not None:
            theirs, t_medpy = timed(lambda: medpy_hd95(a, b, voxelspacing=(1.0, 1.0, 1.0)), max(1, args.repeats // 2))
            line += (f", medpy {t_medpy * 1000:.1f} ms (HD95 {theirs:.4f} mm, same: {np.isclose(ours, theirs)}), "
                     f"speed-up x{t_medpy / t_ours:.1f}")
        print(line)


if __name__ == "__main__":
    main()
