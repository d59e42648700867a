"""Rebuild this folder's cropped copy of the BraTS Toolkit tutorial case TCGA-DU-7294 from the full-size files.

Usage: ``python make_crop.py FULL_SIZE_FOLDER [OUT_FOLDER]`` (OUT_FOLDER defaults to this script's folder).
The box is the bounding box of the union of the five teams' segmentations plus ``margin_voxels`` on every
side, stored in ``crop.json`` as a SimpleITK index (x, y, z order, 0-based, stop exclusive). Cropping with
``RegionOfInterest`` keeps spacing and direction and moves the origin to the box's first voxel, so every
cropped voxel keeps its physical position.
"""
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
SEQUENCES = ("TCGA-DU-7294_t1_bet.nii.gz", "TCGA-DU-7294_t1c_bet.nii.gz", "TCGA-DU-7294_t2_bet.nii.gz",
             "TCGA-DU-7294_fla_bet.nii.gz")
SEGMENTATIONS = ("hnfnetv1-20.nii.gz", "isen-20.nii.gz", "sanet0-20.nii.gz", "scan-20.nii.gz",
                 "yixinmpl-20.nii.gz")
MARGIN_VOXELS = 8


def union_box(source: Path, margin: int) -> tuple[list[int], list[int], list[int]]:
    """(start, size, full size) in SimpleITK (x, y, z) index order of the segmentations' union plus margin."""
    images = [sitk.ReadImage(str(source / name)) for name in SEGMENTATIONS]
    union = np.any([sitk.GetArrayFromImage(im) > 0 for im in images], axis=0)  # (z, y, x)
    nonzero = np.nonzero(union)
    full = list(images[0].GetSize())
    low = [int(nonzero[2 - d].min()) - margin for d in range(3)]
    high = [int(nonzero[2 - d].max()) + 1 + margin for d in range(3)]
    start = [max(0, lo) for lo in low]
    size = [min(full[d], high[d]) - start[d] for d in range(3)]
    return start, size, full


def main(source: Path, out: Path) -> None:
    start, size, full = union_box(source, MARGIN_VOXELS)
    for name in SEQUENCES + SEGMENTATIONS:
        image = sitk.ReadImage(str(source / name))
        assert list(image.GetSize()) == full, name
        sitk.WriteImage(sitk.RegionOfInterest(image, size, start), str(out / name), useCompression=True)
    cropped = sitk.ReadImage(str(out / SEGMENTATIONS[0]))
    box = {"index_order": "SimpleITK (x, y, z), 0-based, stop exclusive; numpy arrays are (z, y, x)",
           "source_size": full, "start": start, "size": size, "stop": [s + n for s, n in zip(start, size)],
           "numpy_slices_zyx": [[start[d], start[d] + size[d]] for d in (2, 1, 0)],
           "margin_voxels": MARGIN_VOXELS,
           "rule": "bounding box of the union of the five segmentations (label > 0) plus the margin",
           "spacing_mm": list(cropped.GetSpacing()), "origin_mm": list(cropped.GetOrigin()),
           "files": list(SEQUENCES + SEGMENTATIONS)}
    # one key per line, lists inline: easy to read and to diff
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in box.items()]
    (out / "crop.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else HERE)
