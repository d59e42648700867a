"""Time per case of our lesion-wise BraTS metrics against the official package, in the same run.

    python3 benchmarks/bench_brats_lesionwise.py --official-python ../venv-brats-official/bin/python \
        [--case tests/data/brats_TCGA-DU-7294] [--repeats 3] [--json benchmarks/results/brats_lesionwise.json]

The official package lives in a virtual environment of its own (it pins numpy < 2.3, pandas < 3 and
rich < 14): ``python3 -m venv ../venv-brats-official && ../venv-brats-official/bin/pip install
brats-evaluation==0.0.10`` (pulls panoptica 2.1.7).

Cases: the full 240 x 240 x 155 real BraTS case, ``hnfnetv1-20`` as reference and the four other teams as
predictions (labels 4 -> 3, written as .nii.gz to a temporary folder). ``--case`` defaults to the
repository's cropped copy, which is padded back to the full size with zeros from its ``crop.json`` (the
segmentations lie inside the crop, so this is the original case voxel for voxel); a full-size copy is
taken as it is. Both sides are timed in process
from the two file paths to the per-region values (reading included), the official one
(``Panoptica_Evaluator`` loaded once from brats-evaluation's bundled ``config_gli.yaml``, as
``brats-evaluate`` does) in its own virtual environment through a subprocess that reports its own
timings. Reported: median seconds per case over ``--repeats`` passes, for all six ``gli`` regions and
for WT/TC/ET only (the official evaluator with ``skip_groups``, ours with a three-region configuration),
and the ratio ours / official; ``--json`` also writes them, with the machine and versions, to a file.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunetv2_ciml.evaluation import brats_lesionwise
from nnunetv2_ciml.evaluation.brats_lesionwise import brats_lesionwise_metrics

REFERENCE, PREDICTIONS = "hnfnetv1-20", ("isen-20", "sanet0-20", "scan-20", "yixinmpl-20")
DEFAULT_CASE = Path(__file__).resolve().parent.parent / "tests" / "data" / "brats_TCGA-DU-7294"

OFFICIAL_SNIPPET = r"""
import json, sys, time
from importlib.resources import files
from panoptica import Panoptica_Evaluator
pairs, repeats = json.loads(sys.argv[1]), int(sys.argv[2])
evaluator = Panoptica_Evaluator.load_from_config(str(files("brats_evaluation").joinpath("configs", "config_gli.yaml")))
out = {}
for name, skip in (("gli", None), ("wt_tc_et", ["netc", "snfh", "rc"])):
    times = []
    for _ in range(repeats):
        for ref, pred in pairs:
            t = time.perf_counter()
            evaluator.evaluate(pred, ref, skip_groups=skip)
            times.append(time.perf_counter() - t)
    out[name] = times
print(json.dumps(out))
"""


def read_full_size(case_dir: Path, team: str) -> sitk.Image:
    """The team's segmentation at full size: a copy cropped by ``make_crop.py`` is padded back with zeros."""
    image = sitk.ReadImage(str(case_dir / f"{team}.nii.gz"))
    crop = case_dir / "crop.json"
    if crop.is_file():
        info = json.loads(crop.read_text())
        if list(image.GetSize()) == info["size"]:
            upper = [full - stop for full, stop in zip(info["source_size"], info["stop"])]
            image = sitk.ConstantPad(image, info["start"], upper, 0)
    return image


def write_cases(case_dir: Path, tmp: Path):
    def relabel(team):
        image = read_full_size(case_dir, team)
        array = sitk.GetArrayFromImage(image).astype(np.uint8)
        array[array == 4] = 3
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        path = tmp / f"{team}.nii.gz"
        sitk.WriteImage(out, str(path), True)
        return str(path)

    ref = relabel(REFERENCE)
    return [(ref, relabel(team)) for team in PREDICTIONS]


def ours(pairs, repeats, config):
    times = []
    for _ in range(repeats):
        for ref_file, pred_file in pairs:
            t = time.perf_counter()
            ref_image = sitk.ReadImage(ref_file)
            ref = sitk.GetArrayFromImage(ref_image)
            pred = sitk.GetArrayFromImage(sitk.ReadImage(pred_file))
            brats_lesionwise_metrics(ref, pred, tuple(reversed(ref_image.GetSpacing())), config=config)
            times.append(time.perf_counter() - t)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-python", required=True, help="python of the venv with brats-evaluation")
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE,
                        help="folder of the BraTS case TCGA-DU-7294, full size or cropped as the default "
                             "tests/data/brats_TCGA-DU-7294")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    # a three-region configuration for the WT/TC/ET timing (same code path, fewer regions)
    brats_lesionwise.LESIONWISE_CONFIGS["wt_tc_et"] = {k: brats_lesionwise.LESIONWISE_CONFIGS["gli"][k]
                                                       for k in ("ET", "TC", "WT")}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_cases(args.case, Path(tmp))
        size = "x".join(str(n) for n in sitk.ReadImage(pairs[0][0]).GetSize())
        official = json.loads(subprocess.run([args.official_python, "-c", OFFICIAL_SNIPPET, json.dumps(pairs),
                                              str(args.repeats)], check=True, capture_output=True,
                                             text=True).stdout.strip().splitlines()[-1])
        mine = {name: ours(pairs, args.repeats, name) for name in ("gli", "wt_tc_et")}
    versions = subprocess.run([args.official_python, "-c", "from importlib.metadata import version as v; "
                               "print(v('brats-evaluation'), v('panoptica'))"], capture_output=True, text=True)
    print(f"official: brats-evaluation / panoptica {versions.stdout.strip()}; {len(pairs)} cases {size}, "
          f"{args.repeats} passes; median s per case")
    results = {}
    for name, label in (("gli", "6 regions (gli)"), ("wt_tc_et", "WT/TC/ET")):
        o, m = float(np.median(official[name])), float(np.median(mine[name]))
        print(f"{label:16s} official {o:.3f} s   ours {m:.3f} s   ours/official {m / o:.2f}")
        results[name] = {"regions": label, "official_s": round(o, 4), "ours_s": round(m, 4),
                         "ours_over_official": round(m / o, 3)}
    if args.json is not None:
        official_versions = versions.stdout.split()
        # the official environment's path is this machine's; its versions are recorded below
        argv = ["OFFICIAL_VENV/bin/python" if a == args.official_python else a for a in sys.argv[1:]]
        record = {"command": "python benchmarks/bench_brats_lesionwise.py " + " ".join(argv),
                  "date": time.strftime("%Y-%m-%d"),
                  "what": "median seconds per case, from the two files to the per-region values (reading "
                          "included), both in process, measured in the same run",
                  "cases": f"{len(pairs)} (TCGA-DU-7294 {size}, hnfnetv1-20 vs the four other teams)",
                  "repeats": args.repeats,
                  "official": {"brats-evaluation": official_versions[0] if official_versions else None,
                               "panoptica": official_versions[1] if len(official_versions) > 1 else None},
                  "machine": {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
                              "python": platform.python_version(), "platform": platform.platform()},
                  "results": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"written: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
