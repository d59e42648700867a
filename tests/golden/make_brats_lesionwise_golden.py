"""Golden values for the lesion-wise BraTS metrics, computed by the official package.

Run with the OFFICIAL package's interpreter, in a virtual environment of its own (it pins numpy < 2.3,
pandas < 3 and rich < 14, which conflict with nnunetv2_ciml's), from the repository root:

    python3 -m venv ../venv-brats-official
    ../venv-brats-official/bin/pip install brats-evaluation==0.0.10     # pulls panoptica 2.1.7
    ../venv-brats-official/bin/python tests/golden/make_brats_lesionwise_golden.py
    # the real case defaults to the repository's cropped copy, tests/data/brats_TCGA-DU-7294;
    # --real-case FOLDER takes another copy of it (cropped like that one, or full size)

What it does (everything below is written under tests/golden/):

1. Synthetic cases (BraTS 2023+ labels 1 NETC, 2 SNFH, 3 ET, 4 RC), written by this script to
   ``brats_lesionwise_synthetic/{ref,pred}/BraTS-GLI-0000K-000.nii.gz``: several lesions with a split
   and a missed one, a one-voxel speck, an empty region, a no-overlap region, a false-positive-only
   region, an anisotropic grid, small and large lesions around the 20 mm^3 metastasis threshold.
2. The real case (``--real-case``, the BraTS 2020 case TCGA-DU-7294 with five teams' segmentations;
   default: the repository's copy ``tests/data/brats_TCGA-DU-7294``): the bounding box of the union of
   the five segmentations' non-zero voxels plus an 8-voxel margin, clipped to the image (array index
   order z, y, x; half-open; stored as ``real_case.box_zyx``); labels mapped to the 2023 convention
   (4 -> 3). ``hnfnetv1-20`` is the reference, each other team a prediction (four cases). The
   repository's copy is already cropped to that box (its ``crop.json`` holds the box in full-size
   coordinates) and is used as it is; a full-size copy is cropped here. Both give the same files.
3. Runs the official command line tools exactly as a challenge participant would:
   ``brats-evaluate --ref_path REF --pred_path PRED --config {gli,mets} --summary_json J`` and
   ``brats-parse-metrics seg --json_path J --output_csv_path C`` (gli) or
   ``brats-parse-metrics mets --json_path J --output_csv_path C`` (mets, default thresholds 20 and 0.1),
   and stores panoptica's per-case results (J) and the parsed leaderboard table (C) in
   ``brats_lesionwise_golden.json`` together with the package versions and these commands.
4. A missing prediction: the synthetic references against the synthetic predictions without
   MISSING_CASE's file (``brats-evaluate`` lists it under ``missings``; ``brats-parse-metrics`` fills its
   row), stored under ``missing_prediction`` with every column of the parsed table.
"""
import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
SYNTHETIC = HERE / "brats_lesionwise_synthetic"
GOLDEN = HERE / "brats_lesionwise_golden.json"
# hnfnetv1 as reference: it has enhancing tumour (isen, scan and yixinmpl have none: empty-prediction rule)
REFERENCE_TEAM = "hnfnetv1-20"
PREDICTION_TEAMS = ("isen-20", "sanet0-20", "scan-20", "yixinmpl-20")
MARGIN = 8
# panoptica's per-case result keys kept (the rest: IoU-based and per-lesion rows the parsed table summarises)
RAW_KEYS = ("tp", "fp", "fn", "prec", "rec", "rq", "sq_dsc", "sq_dsc_std", "sq_hd95", "sq_hd95_std", "sq_nsd",
            "sq_nsd_std", "global_bin_dsc", "global_bin_hd95", "global_bin_nsd", "n_ref_instances", "n_pred_instances")
# parsed leaderboard columns kept (the all_instance_* and global_* ones repeat RAW_KEYS)
PARSED_PREFIXES = ("lesionwise_", "large_instance_", "small_instance_")
# the synthetic case left without prediction for the missing-prediction golden values: its reference has
# SNFH (two lesions) and nothing else, so it shows the rule on regions with lesions and on empty ones
MISSING_CASE = "BraTS-GLI-00002-000"
DEFAULT_REAL_CASE = HERE.parent / "data" / "brats_TCGA-DU-7294"


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    """Boolean ball in a (z, y, x) array; centre in voxels, radius in mm, spacing in mm per array axis."""
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d2 <= radius ** 2


def synthetic_cases():
    """``{case_id: (ref, pred, spacing_xyz)}`` with arrays in (z, y, x) order."""
    shape = (24, 40, 48)
    cases = {}

    # 1: several ET lesions: one good match, one split in two by the prediction, one missed; a one-voxel
    #    speck and a shifted false positive; NETC/SNFH around the first lesion; RC in both.
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[ball(shape, (12, 12, 12), 8)] = 2
    ref[ball(shape, (12, 12, 12), 5)] = 3
    ref[ball(shape, (12, 12, 12), 2)] = 1
    ref[4:12, 25:34, 30:40] = 3                    # lesion the prediction splits
    ref[ball(shape, (18, 32, 10), 3)] = 3          # missed lesion
    ref[16:22, 30:38, 36:44] = 4                   # resection cavity
    pred[ball(shape, (12, 13, 12), 8)] = 2
    pred[ball(shape, (12, 13, 11), 5)] = 3
    pred[ball(shape, (12, 13, 12), 1.5)] = 1
    pred[4:12, 25:34, 30:34] = 3                   # split: left part
    pred[4:12, 25:34, 36:40] = 3                   # split: right part
    pred[2, 2, 46] = 3                             # speck
    pred[20:23, 2:5, 2:5] = 3                      # false positive
    pred[17:22, 31:38, 35:43] = 4
    cases["BraTS-GLI-00001-000"] = (ref, pred, (1.0, 1.0, 1.0))

    # 2: empty regions: no ET, no NETC, no RC anywhere; SNFH only (WT = SNFH), two lesions vs one.
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[ball(shape, (10, 20, 20), 6)] = 2
    ref[ball(shape, (10, 20, 38), 4)] = 2
    pred[ball(shape, (11, 20, 21), 6)] = 2
    cases["BraTS-GLI-00002-000"] = (ref, pred, (1.0, 1.0, 1.0))

    # 3: no overlap: ET in both but apart; NETC only in the reference (empty prediction); SNFH only in
    #    the prediction (empty reference).
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[ball(shape, (8, 10, 10), 4)] = 3
    ref[ball(shape, (16, 30, 30), 3)] = 1
    pred[ball(shape, (8, 30, 40), 4)] = 3
    pred[ball(shape, (18, 10, 40), 3)] = 2
    cases["BraTS-GLI-00003-000"] = (ref, pred, (1.0, 1.0, 1.0))

    # 4: anisotropic grid (x 0.8, y 1.0, z 2.5 mm) with small (< 20 mm^3) and large metastases.
    spacing_zyx = (2.5, 1.0, 0.8)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[ball(shape, (12, 20, 15), 7, spacing_zyx)] = 3      # large, matched
    ref[ball(shape, (12, 20, 15), 10, spacing_zyx) & (ref == 0)] = 2
    ref[5, 5, 40:43] = 3                                    # small (3 voxels, 6 mm^3), detected
    ref[20, 35, 5:7] = 3                                    # small (2 voxels), missed
    ref[ball(shape, (6, 32, 36), 4, spacing_zyx)] = 1       # large NETC, matched poorly
    pred[ball(shape, (12, 21, 16), 7, spacing_zyx)] = 3
    pred[ball(shape, (12, 21, 16), 10, spacing_zyx) & (pred == 0)] = 2
    pred[5, 5, 41:45] = 3
    pred[ball(shape, (6, 33, 39), 4, spacing_zyx)] = 1
    pred[20, 2, 2] = 3                                      # speck
    cases["BraTS-GLI-00004-000"] = (ref, pred, (0.8, 1.0, 2.5))

    # 5: false positives only: empty reference, prediction with two ET lesions and SNFH.
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    pred[ball(shape, (12, 12, 12), 3)] = 3
    pred[ball(shape, (12, 30, 30), 5)] = 2
    pred[ball(shape, (12, 30, 30), 2)] = 3
    cases["BraTS-GLI-00005-000"] = (ref, pred, (1.0, 1.0, 1.0))
    return cases


def write_label(array, spacing_xyz, path, origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def real_case_box(real_case: Path):
    """Union bounding box of the five segmentations plus MARGIN voxels: [(start, stop)] per (z, y, x), in
    full-size coordinates. A copy already cropped to it (``crop.json`` of ``make_crop.py``) gives its box."""
    crop = real_case / "crop.json"
    if crop.is_file():
        info = json.loads(crop.read_text())
        size = sitk.ReadImage(str(real_case / f"{REFERENCE_TEAM}.nii.gz")).GetSize()
        if list(size) == info["size"] and info["margin_voxels"] == MARGIN:
            return [tuple(axis) for axis in info["numpy_slices_zyx"]]
    union = None
    for team in (REFERENCE_TEAM,) + PREDICTION_TEAMS:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(real_case / f"{team}.nii.gz"))) > 0
        union = a if union is None else union | a
    box = []
    for axis in range(3):
        hits = np.flatnonzero(np.any(union, axis=tuple(i for i in range(3) if i != axis)))
        box.append((max(int(hits[0]) - MARGIN, 0), min(int(hits[-1]) + 1 + MARGIN, union.shape[axis])))
    return box


def crop_real(real_case: Path, team: str, box):
    """The team's segmentation cropped to ``box`` (sitk slicing keeps spacing/direction, moves the origin;
    a copy already cropped to it is taken as it is), labels 4 -> 3."""
    image = sitk.ReadImage(str(real_case / f"{team}.nii.gz"))
    (z0, z1), (y0, y1), (x0, x1) = box
    cropped = image if image.GetSize() == (x1 - x0, y1 - y0, z1 - z0) else image[x0:x1, y0:y1, z0:z1]
    array = sitk.GetArrayFromImage(cropped).astype(np.uint8)
    array[array == 4] = 3
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(cropped)
    return out


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def read_csv(path: Path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {row["subject_id"]: {k: (float(v) if v not in ("", None) else math.nan) for k, v in row.items()
                                if k != "subject_id"} for row in rows}


def official(ref_dir: Path, pred_dir: Path, work: Path, bin_dir: Path, missing=(), prefixes=PARSED_PREFIXES):
    """``{config: {"per_case": panoptica's results, "parsed": leaderboard table}}`` of the official tools;
    ``missing``: the cases expected without prediction; ``prefixes``: parsed columns kept (None: all)."""
    out = {}
    for config, parser in (("gli", "seg"), ("mets", "mets")):
        j, c = work / f"{config}.json", work / f"{config}.csv"
        run([str(bin_dir / "brats-evaluate"), "--ref_path", str(ref_dir), "--pred_path", str(pred_dir),
             "--config", config, "--summary_json", str(j)])
        run([str(bin_dir / "brats-parse-metrics"), parser, "--json_path", str(j), "--output_csv_path", str(c)])
        raw = json.loads(j.read_text())
        if raw["missings"] != [f"{case}.nii.gz" for case in missing] or any("error" in m for m in raw["metrics"]):
            raise RuntimeError(f"official evaluation failed: {raw}")
        out[config] = {"per_case": {m["subject_name"][:-len(".nii.gz")]: {
                           region: {k: v for k, v in values.items() if k in RAW_KEYS}
                           for region, values in m.items() if region != "subject_name"} for m in raw["metrics"]},
                       "parsed": {case[:-len(".nii.gz")] if case.endswith(".nii.gz") else case:
                                  {k: v for k, v in row.items() if prefixes is None or k.startswith(prefixes)}
                                  for case, row in read_csv(c).items() if case != "median"}}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-case", type=Path, default=DEFAULT_REAL_CASE,
                        help="folder of the BraTS case TCGA-DU-7294, cropped as tests/data/brats_TCGA-DU-7294 "
                             "(the default) or full size")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent

    cases = synthetic_cases()
    for case, (ref, pred, spacing) in cases.items():
        write_label(ref, spacing, SYNTHETIC / "ref" / f"{case}.nii.gz")
        write_label(pred, spacing, SYNTHETIC / "pred" / f"{case}.nii.gz")

    box = real_case_box(args.real_case)
    golden = {
        "versions": {"brats-evaluation": version("brats-evaluation"), "panoptica": version("panoptica"),
                     "numpy": version("numpy"), "connected-components-3d": version("connected-components-3d"),
                     "scipy": version("scipy"), "SimpleITK": version("SimpleITK"), "python": sys.version.split()[0]},
        "command": "../venv-brats-official/bin/python tests/golden/make_brats_lesionwise_golden.py",
        "official_commands": ["brats-evaluate --ref_path REF --pred_path PRED --config gli --summary_json gli.json",
                              "brats-parse-metrics seg --json_path gli.json --output_csv_path gli.csv",
                              "brats-evaluate --ref_path REF --pred_path PRED --config mets --summary_json mets.json",
                              "brats-parse-metrics mets --json_path mets.json --output_csv_path mets.csv"],
        "real_case": {"source": "brats_TCGA-DU-7294", "reference": REFERENCE_TEAM,
                      "predictions": {f"BraTS-GLI-0010{i + 1}-000": t for i, t in enumerate(PREDICTION_TEAMS)},
                      "box_zyx": box, "margin": MARGIN, "labels": "BraTS 2020 file, 4 -> 3 (2023 convention)"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for sub in ("s", "r", "m", "ref", "pred", "pred_missing"):
            (tmp / sub).mkdir()
        golden["synthetic"] = official(SYNTHETIC / "ref", SYNTHETIC / "pred", tmp / "s", bin_dir)
        for case in cases:
            if case != MISSING_CASE:
                shutil.copyfile(SYNTHETIC / "pred" / f"{case}.nii.gz", tmp / "pred_missing" / f"{case}.nii.gz")
        golden["missing_prediction"] = {"missing_case": MISSING_CASE,
                                        **official(SYNTHETIC / "ref", tmp / "pred_missing", tmp / "m", bin_dir,
                                                   missing=(MISSING_CASE,), prefixes=None)}
        ref_image = crop_real(args.real_case, REFERENCE_TEAM, box)
        for case, team in golden["real_case"]["predictions"].items():
            sitk.WriteImage(ref_image, str(tmp / "ref" / f"{case}.nii.gz"), True)
            sitk.WriteImage(crop_real(args.real_case, team, box), str(tmp / "pred" / f"{case}.nii.gz"), True)
        golden["real"] = official(tmp / "ref", tmp / "pred", tmp / "r", bin_dir)
    GOLDEN.write_text(json.dumps(golden, sort_keys=True) + "\n")
    print(f"written: {GOLDEN}")


if __name__ == "__main__":
    main()
