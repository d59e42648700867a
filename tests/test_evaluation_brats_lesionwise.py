"""Lesion-wise BraTS metrics against golden values of the official package (brats-evaluation 0.0.10).

The golden values (``tests/golden/brats_lesionwise_golden.json``) were computed by the official
command line tools in a separate virtual environment by ``tests/golden/make_brats_lesionwise_golden.py``
(versions and command inside the JSON); nothing here imports the official package.
"""
import itertools
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ciml.evaluation import evaluate_folder
from nnunetv2_ciml.evaluation.brats_lesionwise import brats_lesionwise_metrics
from helpers import brats_labels, write_labels

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "brats_lesionwise_golden.json").read_text())
SYNTHETIC = GOLDEN_DIR / "brats_lesionwise_synthetic"
# the cropped copy kept in the repository (same box as the golden script's)
REAL_CASE_SOURCES = (Path(__file__).parent / "data" / "brats_TCGA-DU-7294",)
TOL = 1e-6

# panoptica's result key -> ours
RAW_TO_OURS = {"tp": "TP", "fp": "FP", "fn": "FN", "prec": "Precision", "rec": "Recall", "rq": "F1",
               "sq_dsc": "Dice", "sq_dsc_std": "Dice_std", "sq_hd95": "HD95", "sq_hd95_std": "HD95_std",
               "sq_nsd": "NSD", "sq_nsd_std": "NSD_std", "global_bin_dsc": "global_Dice",
               "global_bin_hd95": "global_HD95", "global_bin_nsd": "global_NSD", "n_ref_instances": "n_ref",
               "n_pred_instances": "n_pred"}
# brats-parse-metrics column prefix -> ours (seg parser: the lesion-wise means; mets parser: large/small split)
SEG_PARSED = {"lesionwise_dsc_mean": "Dice", "lesionwise_dsc_std": "Dice_std", "lesionwise_hd95_mean": "HD95",
              "lesionwise_hd95_std": "HD95_std", "lesionwise_nsd_mean": "NSD", "lesionwise_nsd_std": "NSD_std"}
METS_PARSED = {"lesionwise_dsc_mean": "large_Dice", "lesionwise_dsc_std": "large_Dice_std",
               "lesionwise_hd95_mean": "large_HD95", "lesionwise_hd95_std": "large_HD95_std",
               "lesionwise_nsd_mean": "large_NSD", "lesionwise_nsd_std": "large_NSD_std",
               **{f"{size}_instance_{k}": f"{size}_{v}" for size in ("large", "small")
                  for k, v in (("tp", "TP"), ("fp", "FP"), ("fn", "FN"), ("prec", "Precision"), ("rec", "Recall"),
                               ("f1", "F1"))}}
# columns both parsers write (kept in the missing-prediction golden values only: elsewhere the raw results hold them)
COMMON_PARSED = {"all_instance_tp": "TP", "all_instance_fp": "FP", "all_instance_fn": "FN",
                 "all_instance_prec": "Precision", "all_instance_rec": "Recall", "all_instance_f1": "F1",
                 "global_dsc": "global_Dice", "global_hd95": "global_HD95", "global_nsd": "global_NSD"}


def _same(ours, official) -> bool:
    ours, official = float(ours), float(official)
    if math.isnan(official) or math.isinf(official):
        return (math.isnan(ours) and math.isnan(official)) or ours == official
    return abs(ours - official) <= TOL


def _compare(summary: dict, golden: dict, config: str) -> int:
    """Every golden value of ``config`` against ours; returns how many were compared."""
    mismatches, n = [], 0
    for case, regions in golden[config]["per_case"].items():
        for region, values in regions.items():
            ours = summary["per_case"][case][region.upper()]
            for raw_key, our_key in RAW_TO_OURS.items():
                official = values.get(raw_key, float("nan"))  # panoptica leaves out a metric it divides by 0 for
                if raw_key == "global_bin_hd95" and official == float("inf"):
                    official = 373.0  # what brats-parse-metrics reports
                n += 1
                if not _same(ours[our_key], official):
                    mismatches.append((case, region, our_key, ours[our_key], official))
    mapping = {**COMMON_PARSED, **(METS_PARSED if config == "mets" else SEG_PARSED)}
    for case, row in golden[config]["parsed"].items():
        for column, official in row.items():
            prefix, region = column.rsplit("_", 1)
            if prefix not in mapping:
                continue
            metric = mapping[prefix]
            if case in ("mean", "std"):
                ours = summary[case][region.upper()][metric]
            else:
                ours = summary["per_case"][case][region.upper()][metric]
            n += 1
            if not _same(ours, official):
                mismatches.append((case, region, metric, ours, official))
    assert not mismatches, f"{len(mismatches)} of {n} values differ from the official package: {mismatches[:10]}"
    return n


@pytest.mark.parametrize("config", ["gli", "mets"])
def test_synthetic_cases_equal_the_official_package(tmp_path, config):
    """Several lesions, a split, a missed lesion, specks, empty / no-overlap / FP-only regions, an anisotropic
    grid and metastases around 20 mm^3, through the folder runner from files: every per-case value and the
    mean/std over cases equal brats-evaluate + brats-parse-metrics. Fails on a wrong matching (greedy instead
    of optimal, or counting the split as two TPs), 6- instead of 26-connectivity (the speck-free diagonal
    lesions), FPs in the lesion-wise mean of gli, a wrong empty/no-overlap rule, the physical instead of the
    official spacing handling on case 4, or a size split by voxel count instead of mm^3."""
    summary = evaluate_folder("brats", SYNTHETIC / "ref", SYNTHETIC / "pred", tmp_path, verbose=False,
                              lesionwise=config)
    assert _compare(summary, GOLDEN["synthetic"], config) > 300


MISSING = GOLDEN["missing_prediction"]


def _predictions_without(case: str, folder: Path) -> Path:
    folder.mkdir()
    for f in (SYNTHETIC / "pred").glob("*.nii.gz"):
        if f.name != f"{case}.nii.gz":
            shutil.copyfile(f, folder / f.name)
    return folder


@pytest.mark.parametrize("config", ["gli", "mets"])
def test_missing_prediction_follows_the_official_rule(tmp_path, config):
    """A reference case without prediction file, scored by brats-evaluate (which lists it as missing) and
    brats-parse-metrics (which fills its row): every value 0 except the HD95 means, 373, in every region,
    the ones with an empty reference included, and lesion counts 0. Compared with the official package on
    every column of the parsed table (per case and the mean/std over cases). Fails if the missing case were
    scored as an empty prediction (FN = the reference lesions, NaN for the empty regions), or left out."""
    case = MISSING["missing_case"]
    summary = evaluate_folder("brats", SYNTHETIC / "ref", _predictions_without(case, tmp_path / "pred"),
                              tmp_path / "out", verbose=False, lesionwise=config)
    assert summary["missing"] == [case]
    assert _compare(summary, MISSING, config) > 400
    row = summary["per_case"][case]
    assert row["WT"]["n_ref"] == 2 and row["WT"]["FN"] == 0 and row["WT"]["TP"] == 0  # WT = SNFH, two lesions
    assert row["ET"]["Dice"] == 0.0 and row["ET"]["HD95"] == 373.0 and row["ET"]["global_HD95"] == 373.0  # empty ref
    if config == "mets":
        assert row["WT"]["large_HD95"] == 373.0 and row["WT"]["large_HD95_std"] == 0.0 and row["ET"]["small_F1"] == 0


def test_missing_prediction_corrected_variant_scores_an_empty_prediction(tmp_path, capsys):
    """``--variant corrected``: a missing prediction is exactly an empty prediction file (every reference lesion
    missed, empty regions NaN); the CLI's warning says which rule applied."""
    from nnunetv2_ciml.cli import main

    case = MISSING["missing_case"]
    preds = _predictions_without(case, tmp_path / "pred")
    args = ["evaluate", "brats", "-ref", str(SYNTHETIC / "ref"), "-pred", str(preds), "--lesionwise"]
    assert main(args + ["-o", str(tmp_path / "c"), "--variant", "corrected"]) == 0
    assert "scored as empty" in capsys.readouterr().err
    assert main(args + ["-o", str(tmp_path / "o")]) == 0
    assert "official rule" in capsys.readouterr().err
    reference = sitk.ReadImage(str(SYNTHETIC / "ref" / f"{case}.nii.gz"))
    empty = sitk.GetImageFromArray(np.zeros(sitk.GetArrayFromImage(reference).shape, np.uint8))
    empty.CopyInformation(reference)
    sitk.WriteImage(empty, str(preds / f"{case}.nii.gz"))
    explicit = evaluate_folder("brats", SYNTHETIC / "ref", preds, tmp_path / "e", verbose=False, lesionwise="gli",
                               variant="corrected")
    corrected = json.loads((tmp_path / "c" / "summary.json").read_text())
    got, want = corrected["per_case"][case], explicit["per_case"][case]
    assert all(_same(got[r][m], want[r][m]) for r in want for m in want[r])
    assert got["SNFH"]["FN"] == 2 and got["SNFH"]["HD95"] == 373.0 and math.isnan(got["ET"]["Dice"])
    official = json.loads((tmp_path / "o" / "summary.json").read_text())["per_case"][case]
    assert official["SNFH"]["FN"] == 0 and official["ET"]["Dice"] == 0.0


@pytest.fixture
def brats_real_case(tmp_path) -> Path:
    """Reference / prediction folders of the real BraTS case, cropped to the golden script's box.

    Reads the first of ``REAL_CASE_SOURCES`` that exists; a copy already cropped to the box is used as it is,
    the full 240 x 240 x 155 case is cropped here. Labels stay in the BraTS 2020 convention: the mode
    converts them (the golden run had 4 -> 3).
    """
    found = [d for d in REAL_CASE_SOURCES if (d / "hnfnetv1-20.nii.gz").is_file()]
    if not found:
        pytest.skip(f"real BraTS case not found in {[str(d) for d in REAL_CASE_SOURCES]}")
    source = found[0]
    info = GOLDEN["real_case"]
    (z0, z1), (y0, y1), (x0, x1) = info["box_zyx"]

    def cropped(team: str) -> sitk.Image:
        image = sitk.ReadImage(str(source / f"{team}.nii.gz"))
        if image.GetSize() == (x1 - x0, y1 - y0, z1 - z0):
            return image
        return image[x0:x1, y0:y1, z0:z1]

    for case, team in info["predictions"].items():
        for sub, who in (("ref", info["reference"]), ("pred", team)):
            (tmp_path / sub).mkdir(exist_ok=True)
            sitk.WriteImage(cropped(who), str(tmp_path / sub / f"{case}.nii.gz"))
    return tmp_path


@pytest.mark.parametrize("config", ["gli", "mets"])
def test_real_case_equals_the_official_package(brats_real_case, tmp_path, config):
    """One team's segmentation of a real glioma as reference, four others as predictions (BraTS 2020 labels,
    converted by ``labels='brats2020'``): equal to the official package on every value. Fails if 4 were
    read as resection cavity (the official package's silent reading of 2020 files) or on any rule above."""
    summary = evaluate_folder("brats", brats_real_case / "ref", brats_real_case / "pred", tmp_path / "out",
                              verbose=False, lesionwise=config, labels="brats2020")
    assert _compare(summary, GOLDEN["real"], config) > 200


def test_corrected_variant_uses_the_spacing_of_each_axis():
    """Hand-derived: reference = two voxels stacked along z (2.5 mm apart), prediction = the lower one,
    x spacing 0.8 mm. Surface distances ref->pred {0, 2.5}, pred->ref {0}; the 95th percentile of
    {0, 0, 2.5} (linear) is 2.25 mm. The official package puts the x spacing on the z axis: 0.72.
    Dice 2/3 either way. A region without matched lesion: HD95 infinity (official), 373 (corrected)."""
    ref = np.zeros((4, 3, 3), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 1, 1] = 3
    pred[1, 1, 1] = 3
    ref[0, 0, 0] = 1  # NETC lesion the prediction misses
    spacing_zyx = (2.5, 1.0, 0.8)
    corrected = brats_lesionwise_metrics(ref, pred, spacing_zyx, variant="corrected")
    official = brats_lesionwise_metrics(ref, pred, spacing_zyx)
    assert corrected["ET"]["HD95"] == pytest.approx(2.25)
    assert official["ET"]["HD95"] == pytest.approx(0.72)
    assert corrected["ET"]["Dice"] == official["ET"]["Dice"] == pytest.approx(2 / 3)
    assert official["NETC"]["HD95"] == float("inf") and corrected["NETC"]["HD95"] == 373.0
    assert official["NETC"]["FN"] == 1 and official["NETC"]["F1"] == 0.0


def test_2020_labels_are_converted_not_read_as_resection_cavity():
    """A BraTS 2020 label map (4 = ET) scored with labels='brats2020' has its ET where label 4 is and
    no RC; the same array read as 2024 labels puts it into RC (what the official package does silently)."""
    seg = np.zeros((6, 6, 6), np.uint8)
    seg[1:3, 1:3, 1:3] = 4
    seg[4:6, 4:6, 4:6] = 2
    as2020 = brats_lesionwise_metrics(seg, seg, (1.0, 1.0, 1.0), labels="brats2020")
    as2024 = brats_lesionwise_metrics(seg, seg, (1.0, 1.0, 1.0), labels="brats2024")
    assert as2020["ET"]["TP"] == 1 and as2020["ET"]["Dice"] == 1.0 and math.isnan(as2020["RC"]["Dice"])
    assert as2024["RC"]["TP"] == 1 and math.isnan(as2024["ET"]["Dice"])
    assert as2020["WT"]["TP"] == 2 and as2024["WT"]["TP"] == 1  # 2020: ET and edema are two WT lesions


def test_cli_lesionwise_writes_the_leaderboard_values(tmp_path, capsys):
    """``evaluate brats --lesionwise mets`` writes the large/small split; --variant without --lesionwise and
    --lesionwise in another mode are refused with exit code 2."""
    from nnunetv2_ciml.cli import main

    out = tmp_path / "out"
    assert main(["evaluate", "brats", "-ref", str(SYNTHETIC / "ref"), "-pred", str(SYNTHETIC / "pred"), "-o", str(out),
                 "--lesionwise", "mets"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_case"]["BraTS-GLI-00004-000"]["ET"]["small_TP"] == GOLDEN["synthetic"]["mets"]["parsed"][
        "BraTS-GLI-00004-000"]["small_instance_tp_et"]
    assert "large_Dice" in capsys.readouterr().out
    assert main(["evaluate", "brats", "-ref", str(SYNTHETIC / "ref"), "-pred", str(SYNTHETIC / "pred"), "-o",
                 str(out), "--variant", "corrected"]) == 2
    assert main(["evaluate", "autopet", "-ref", str(SYNTHETIC / "ref"), "-pred", str(SYNTHETIC / "pred"), "-o",
                 str(out), "--lesionwise"]) == 2


def test_nnunet_labels_are_converted_to_the_2023_regions():
    """nnU-Net's BraTS labels (1 edema, 2 NCR, 3 ET) give the same values as the same segmentation in 2023
    labels (1 NETC, 2 SNFH, 3 ET); a swapped edema/NCR mapping would move the NETC lesion into SNFH."""
    brats2023 = np.zeros((8, 8, 8), np.uint8)
    brats2023[1:3, 1:3, 1:3] = 1          # NETC
    brats2023[5:7, 5:7, 5:7] = 2          # SNFH
    brats2023[1:3, 5:7, 1:3] = 3          # ET
    pred2023 = brats2023.copy()
    pred2023[1:3, 1:2, 1:3] = 0           # a worse NETC
    to_nnunet = np.array([0, 2, 1, 3], np.uint8)
    spacing = (1.0, 1.0, 1.0)
    expected = brats_lesionwise_metrics(brats2023, pred2023, spacing, labels="brats2023")
    got = brats_lesionwise_metrics(to_nnunet[brats2023], to_nnunet[pred2023], spacing, labels="nnunet")
    assert got.keys() == expected.keys()
    assert all(_same(got[r][m], expected[r][m]) for r in expected for m in expected[r])
    assert expected["NETC"]["Dice"] == pytest.approx(2 * 4 / (8 + 4)) and expected["SNFH"]["Dice"] == 1.0


def _brute_surface_indices(mask: np.ndarray) -> np.ndarray:
    """Indices of the voxels of ``mask`` with a face neighbour outside it (the image border counts as outside),
    found voxel by voxel."""
    points = []
    for idx in itertools.product(*(range(n) for n in mask.shape)):
        if not mask[idx]:
            continue
        for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
            j = list(idx)
            j[axis] += step
            if not 0 <= j[axis] < mask.shape[axis] or not mask[tuple(j)]:
                points.append(idx)
                break
    return np.array(points)


def _brute_global_hd95_nsd(ref: np.ndarray, pred: np.ndarray, spacing, tolerance: float):
    """Pooled 95th percentile (linear interpolation, written out) of both directed nearest-surface distances
    (every pair of surface voxel centres, distance sqrt(sum((index difference * spacing)^2)) in mm), and
    NSD = the mean over both masks of the fraction of surface voxels within ``tolerance`` of the other surface."""
    a, b = _brute_surface_indices(ref), _brute_surface_indices(pred)
    pair = np.sqrt((((a[:, None, :] - b[None, :, :]) * np.asarray(spacing)) ** 2).sum(axis=-1))
    d_ab, d_ba = pair.min(axis=1), pair.min(axis=0)
    pooled = sorted(np.concatenate([d_ab, d_ba]))
    k = 0.95 * (len(pooled) - 1)
    lo = int(math.floor(k))
    hd = pooled[lo] + (k - lo) * (pooled[min(lo + 1, len(pooled) - 1)] - pooled[lo])
    nsd = 0.5 * (np.mean(d_ab <= tolerance) + np.mean(d_ba <= tolerance))
    return hd, nsd


def test_corrected_variant_global_hd95_and_nsd_equal_a_brute_force_computation():
    """Global (image-level) HD95 and NSD of the corrected variant on a tiny anisotropic case (z 2.5, y 1.0,
    x 0.8 mm; several lesions per region, one touching the image border) equal a brute-force computation in mm
    with the tolerance of the smallest spacing (0.8 mm). Fails if the global values used voxel units or the
    official variant's reversed spacing, a 0.5-voxel or largest-spacing tolerance, or per-lesion instead of
    whole-mask surfaces (all checked to give other numbers here)."""
    spacing = (2.5, 1.0, 0.8)
    ref = np.zeros((6, 9, 11), np.uint8)
    pred = np.zeros_like(ref)
    ref[0:3, 1:5, 1:7] = 3          # ET lesion on the z = 0 border
    ref[1:3, 2:4, 2:4] = 1          # NETC inside it
    ref[4:6, 6:9, 8:11] = 3         # second ET lesion in the opposite corner
    ref[3, 5:8, 1:4] = 2            # SNFH
    pred[1:3, 2:6, 2:7] = 3         # the first ET lesion, shifted
    pred[1:3, 3:4, 2:5] = 1
    pred[5, 6:9, 7:10] = 3          # second lesion, thinner and shifted in x
    pred[2:4, 5:8, 2:5] = 2
    pred[0, 8, 0] = 3               # an ET speck far from everything
    got = brats_lesionwise_metrics(ref, pred, spacing, labels="brats2023", variant="corrected")
    regions = {"ET": (3,), "NETC": (1,), "SNFH": (2,), "TC": (1, 3), "WT": (1, 2, 3)}
    for region, labels in regions.items():
        r, p = np.isin(ref, labels), np.isin(pred, labels)
        hd, nsd = _brute_global_hd95_nsd(r, p, spacing, tolerance=0.8)
        assert got[region]["global_HD95"] == pytest.approx(hd, abs=1e-9), region
        assert got[region]["global_NSD"] == pytest.approx(nsd, abs=1e-9), region
    # the case tells the plausible mistakes apart
    et_ref, et_pred = ref == 3, pred == 3
    for wrong_spacing, wrong_tolerance in (((1.0, 1.0, 1.0), 0.5), ((0.8, 1.0, 2.5), 0.8), (spacing, 2.5),
                                           (spacing, 1.0)):
        hd, nsd = _brute_global_hd95_nsd(et_ref, et_pred, wrong_spacing, wrong_tolerance)
        assert abs(got["ET"]["global_HD95"] - hd) > 1e-3 or abs(got["ET"]["global_NSD"] - nsd) > 1e-3
    assert got["ET"]["TP"] == 2 and got["ET"]["global_HD95"] != pytest.approx(got["ET"]["HD95"])


@pytest.mark.parametrize("convention, outcome", [
    ("brats2020", r"label 4 but no label 3.*--labels brats2020 or --labels brats2024"),
    ("nnunet", r"label 1 holds more voxels than label 2.*--labels nnunet or --labels brats2023"),
    ("brats2023", "brats2023"),
])
def test_lesionwise_reads_the_label_convention_from_the_references_or_refuses(convention, outcome, tmp_path, capsys):
    """Without --labels, lesion-wise evaluation reads the convention from the references: BraTS 2023 labels (1 NETC,
    2 SNFH the largest, 3 ET) are taken as such and said so; BraTS 2020 labels (4 = ET, no 3) and nnU-Net's (1 =
    edema, the largest) are refused with the choice to make. Fails on the silent re-reading the default once did
    (2020's label 4 scored as resection cavity and ET NaN; nnU-Net's 1 and 2 swapped)."""
    from nnunetv2_ciml.cli import main

    to_convention = {"brats2020": np.arange(5), "brats2023": np.array([0, 1, 2, 3, 3]),
                     "nnunet": np.array([0, 2, 1, 3, 3])}[convention]  # from brats_labels' 2020 labels
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for k in range(2):
        for folder in (ref, pred):
            folder.mkdir(exist_ok=True)
            write_labels(folder / f"BraTS-GLI-0000{k}-000.nii.gz", to_convention[brats_labels(k)])
    code = main(["evaluate", "brats", "-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "out"),
                 "--lesionwise"])
    printed = capsys.readouterr()
    if convention == "brats2023":
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert code == 0 and "detected: labels 1-3 with label 2 (SNFH" in summary["label_convention"]
        assert summary["mean"]["ET"]["Dice"] == 1.0 and "detected" in printed.out
    else:
        assert code == 1 and re.search(outcome, printed.err) and not (tmp_path / "out").exists()
