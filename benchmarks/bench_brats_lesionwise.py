"""Time per case of our lesion-wise BraTS metrics against the official package, in the same run.

    python3 benchmarks/bench_brats_lesionwise.py --official-python ../venv-brats-official/bin/python \
        --case ../shared/data/brats_TCGA-DU-7294 [--repeats 3]

Cases: the full 240 x 240 x 155 real BraTS case, ``hnfnetv1-20`` as reference and the four other teams as
predictions (labels 4 -> 3, written as .nii.gz to a temporary folder). Both sides are timed in process
from the two file paths to the per-region values (reading included), the official one
(``Panoptica_Evaluator`` loaded once from brats-evaluation's bundled ``config_gli.yaml``, as
``brats-evaluate`` does) in its own virtual environment through a subprocess that reports its own
timings. Reported: median seconds per case over ``--repeats`` passes, for all six ``gli`` regions and
for WT/TC/ET only (the official evaluator with ``skip_groups``, ours with a three-region configuration),
and the ratio ours / official.
"""
import argparse
import json
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


def write_cases(case_dir: Path, tmp: Path):
    def relabel(team):
        image = sitk.ReadImage(str(case_dir / f"{team}.nii.gz"))
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
    parser.add_argument("--case", type=Path, required=True, help="folder of the BraTS case TCGA-DU-7294")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # a three-region configuration for the WT/TC/ET timing (same code path, fewer regions)
    brats_lesionwise.LESIONWISE_CONFIGS["wt_tc_et"] = {k: brats_lesionwise.LESIONWISE_CONFIGS["gli"][k]
                                                       for k in ("ET", "TC", "WT")}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_cases(args.case, Path(tmp))
        official = json.loads(subprocess.run([args.official_python, "-c", OFFICIAL_SNIPPET, json.dumps(pairs),
                                              str(args.repeats)], check=True, capture_output=True,
                                             text=True).stdout.strip().splitlines()[-1])
        mine = {name: ours(pairs, args.repeats, name) for name in ("gli", "wt_tc_et")}
    versions = subprocess.run([args.official_python, "-c", "from importlib.metadata import version as v; "
                               "print(v('brats-evaluation'), v('panoptica'))"], capture_output=True, text=True)
    print(f"official: brats-evaluation / panoptica {versions.stdout.strip()}; {len(pairs)} cases 240x240x155, "
          f"{args.repeats} passes; median s per case")
    for name, label in (("gli", "6 regions (gli)"), ("wt_tc_et", "WT/TC/ET")):
        o, m = float(np.median(official[name])), float(np.median(mine[name]))
        print(f"{label:16s} official {o:.3f} s   ours {m:.3f} s   ours/official {m / o:.2f}")


if __name__ == "__main__":
    sys.exit(main())
