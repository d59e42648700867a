"""Epoch time of ``nnUNetv2_train`` itself, CIML vs plain nnU-Net, with nnU-Net's augmentation workers.

What a user feels is an epoch of the real training loop: data loading and augmentation in nnU-Net's
background workers, the training step, validation iterations, logging. This script writes a small
BraTS-like dataset (4 modalities, BraTS 2023 labels trained as the regions WT/TC/ET), plans and
preprocesses it with nnU-Net's own planner (3d_fullres, default plans: 32 features at full resolution),
and trains a benchmark trainer pair on it (:mod:`nnunetv2_ciml.benchmarking`):

- CUDA: nnU-Net's ``nnUNetTrainerBenchmark_5epochs`` and ``nnUNetTrainerCIMLBenchmark_5epochs`` (real data
  loading), then both ``_noDataLoading`` twins (the network alone);
- CPU: ``nnUNetTrainer_EpochTime`` against ``nnUNetTrainerCIML_EpochTime`` and the full-width, MAC-matched and
  grouped-branch networks' twins (3 short epochs each).

It reads each epoch's time from nnU-Net's training log ("Epoch time: ... s") and prints the fastest and
the median epoch per trainer and CIML / plain ratios, all measured in this run.

    python benchmarks/bench_epoch_time.py --work /path/to/scratch                 # CPU
    python benchmarks/bench_epoch_time.py --work /path/to/scratch --device cuda --workers 12 --size 160
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

DATASET_ID, DATASET_NAME = 997, "Dataset997_EpochTime"
# device -> [(plain nnU-Net's trainer, [CIML trainers timed against it])]
GROUPS = {"cpu": [("nnUNetTrainer_EpochTime", ["nnUNetTrainerCIML_EpochTime", "nnUNetTrainerCIML_fullWidth_EpochTime",
                                                "nnUNetTrainerCIML_MACmatched_EpochTime",
                                                "nnUNetTrainerCIML_groupedBranches_EpochTime"])],
          "cuda": [("nnUNetTrainerBenchmark_5epochs", ["nnUNetTrainerCIMLBenchmark_5epochs"]),
                   ("nnUNetTrainerBenchmark_5epochs_noDataLoading",
                    ["nnUNetTrainerCIMLBenchmark_5epochs_noDataLoading"])]}


def write_dataset(raw: Path, cases: int, size: int, seed: int = 0) -> None:
    """BraTS-like cases: nested ellipsoids (edema 2 > necrosis 1 > enhancing 3) seen differently per modality."""
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    rng = np.random.default_rng(seed)
    root = raw / DATASET_NAME
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    for i in range(cases):
        centre = rng.uniform(-0.3, 0.3, (3, 1, 1, 1))
        r = np.sqrt((((grid - centre) / rng.uniform(0.3, 0.5, (3, 1, 1, 1))) ** 2).sum(0))
        seg = np.where(r < 1, 2, 0) + np.where(r < 0.6, -1, 0) + np.where((r > 0.4) & (r < 0.6), 2, 0)
        seg = seg.astype(np.uint8)  # 2 edema, 1 necrosis (r < 0.4), 3 enhancing rim
        brain = np.sqrt((grid ** 2).sum(0)) < 0.95
        looks = [(0.2, 0.8, 0.3), (0.1, 0.2, 1.5), (1.0, 0.6, 0.7), (1.2, 0.3, 0.5)]  # T1, T1ce, T2, FLAIR
        for c, (edema, necrosis, enhancing) in enumerate(looks):
            image = brain * (1.0 + rng.normal(0, 0.2, seg.shape))
            image = image + edema * (seg == 2) + necrosis * (seg == 1) + enhancing * (seg == 3)
            sitk.WriteImage(sitk.GetImageFromArray(image.astype(np.float32)),
                            str(root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(seg), str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
    generate_dataset_json(str(root), {0: "T1", 1: "T1ce", 2: "T2", 3: "FLAIR"},
                          {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (1, 3), "enhancing tumor": (3,)},
                          cases, ".nii.gz", regions_class_order=(2, 1, 3), dataset_name=DATASET_NAME)


def epoch_times(results: Path, trainer: str) -> list:
    folder = results / DATASET_NAME / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    logs = sorted(folder.glob("training_log_*.txt"))
    if not logs:
        raise RuntimeError(f"no training log in {folder}")
    return [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", logs[-1].read_text())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path, help="scratch folder for nnU-Net's three folders")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=2, help="nnU-Net's augmentation workers (nnUNet_n_proc_DA)")
    parser.add_argument("--size", type=int, default=64, help="image edge in voxels (the planner picks the patch)")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the results here (default WORK/epoch_time.json)")
    args = parser.parse_args()
    if args.cases < 5:
        parser.error("--cases must be at least 5 (nnU-Net's 5-fold split)")
    work = args.work.resolve()
    env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_n_proc_DA=str(args.workers))
    env.setdefault("nnUNet_compile", "t" if args.device == "cuda" else "f")
    if not (work / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans.json").exists():
        write_dataset(work / "nnUNet_raw", args.cases, args.size)
        subprocess.run([sys.executable, "-m", "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "-d",
                        str(DATASET_ID), "-c", "3d_fullres", "-np", "2"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    plans = json.loads((work / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    print(f"patch {config['patch_size']}, batch {config['batch_size']}, features "
          f"{config['architecture']['arch_kwargs']['features_per_stage']}, {args.workers} augmentation workers, "
          f"{args.device}", flush=True)
    summary = {}
    for plain, cimls in GROUPS[args.device]:
        for trainer in (plain, *cimls):
            subprocess.run([sys.executable, "-m", "nnunetv2.run.run_training", str(DATASET_ID), "3d_fullres", "0",
                            "-tr", trainer, "-device", args.device], env=env, check=True, stdout=subprocess.DEVNULL)
            times = epoch_times(work / "nnUNet_results", trainer)
            summary[trainer] = {"fastest": min(times), "median": statistics.median(times), "epochs": times}
            print(f"{trainer:50s} epochs {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
    print("\nCIML / plain, measured in this run (target on a GPU: real-training epoch <= 1.2)")
    for plain, cimls in GROUPS[args.device]:
        for ciml in cimls:
            print(f"{ciml:50s} fastest epoch {summary[ciml]['fastest'] / summary[plain]['fastest']:.2f}x, "
                  f"median {summary[ciml]['median'] / summary[plain]['median']:.2f}x")
    (args.json or work / "epoch_time.json").write_text(json.dumps({"device": args.device, "workers": args.workers,
                                                      "results": summary}, indent=2))


if __name__ == "__main__":
    main()
