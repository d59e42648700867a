"""The cropped real BraTS case in tests/data matches its crop.json, so metrics on it equal the full case's."""
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CASE = Path(__file__).resolve().parent / "data" / "brats_TCGA-DU-7294"
FULL_ORIGIN = (0.0, -239.0, 0.0)  # the full-size BraTS/SRI-24 grid (240 x 240 x 155, 1 mm, identity direction)


def test_files_have_the_box_of_crop_json_and_keep_their_physical_position():
    """Catches a crop with numpy slicing (origin left at the full image's), a box written in (z, y, x) order,
    or files that were re-cropped without updating crop.json."""
    box = json.loads((CASE / "crop.json").read_text())
    assert box["stop"] == [s + n for s, n in zip(box["start"], box["size"])]
    assert box["numpy_slices_zyx"] == [[box["start"][d], box["stop"][d]] for d in (2, 1, 0)]
    for name in box["files"]:
        image = sitk.ReadImage(str(CASE / name))
        assert list(image.GetSize()) == box["size"], name
        assert image.GetSpacing() == (1.0, 1.0, 1.0) and image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1), name
        expected = [o + s for o, s in zip(FULL_ORIGIN, box["start"])]  # 1 mm, identity direction
        assert list(image.GetOrigin()) == expected == box["origin_mm"], name


def test_every_segmentation_keeps_its_margin_inside_the_box():
    """Surfaces never touch the border, so Dice, HD95 and lesion-wise matching see the full case's masks."""
    box = json.loads((CASE / "crop.json").read_text())
    margin = box["margin_voxels"]
    union = np.zeros(box["size"][::-1], bool)
    for name in box["files"]:
        if not name.startswith("TCGA"):
            labels = sitk.GetArrayFromImage(sitk.ReadImage(str(CASE / name)))
            assert set(np.unique(labels)) <= {0, 1, 2, 4}, name
            union |= labels > 0
    nonzero = np.nonzero(union)
    for axis in range(3):
        assert nonzero[axis].min() == margin and nonzero[axis].max() == union.shape[axis] - 1 - margin
