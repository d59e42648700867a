"""nnUNetTrainerCIML's KL schedule on BraTS-like data, compressed to a CPU budget: does the loss jump where beta rises?

    python benchmarks/kl_schedule_brats.py --out kl_brats [--plot docs/kl_schedule_brats.png]

Data: the test suite's real BraTS case (``tests/data/brats_TCGA-DU-7294``: T1, T1ce, T2, FLAIR, cropped around the
tumour) as 8 BraTS 2020 training cases, its 8 mirror images (flips along each axis), each labelled by one of the
five published segmentations of it; ``nnunetv2_ciml convert brats`` (the regions WT, TC, ET and CIML's default
decomposition), ``nnUNetv2_plan_and_preprocess -c 3d_fullres``, then the plans narrowed to
``min(8 * 2**s, 64)`` features per stage (as a user may edit plans) so that a CPU trains them.

Training: nnU-Net's 1000 epochs x 250 iterations compressed to 20 x 10, beta 1e-3 (``nnUNetTrainerCIML``'s), with
``nnUNetTrainerCIML``'s schedule (``nnUNetTrainerCIML_KLScheduleCPU``) and the first version's (beta 0 in epoch 0,
then rising per epoch to 1e-3 at 10 % of the epochs: ``nnUNetTrainerCIML_epochWarmup_KLScheduleCPU``), both with
every iteration logged, two trainings at a time with one torch thread each. Writes ``OUT/kl_schedule_brats.json``
(per epoch and per iteration: beta, loss, segmentation loss, beta x KL, KL) and, with ``--plot``, the curves.
"""
import argparse
import concurrent.futures
import json
import shutil
import sys
from pathlib import Path

import numpy as np

DATASET_ID = 801
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlansKLScheduleCPU"
TRAINERS = {"default schedule": "nnUNetTrainerCIML_KLScheduleCPU",
            "first version's warm-up": "nnUNetTrainerCIML_epochWarmup_KLScheduleCPU"}
CASE = Path(__file__).resolve().parents[1] / "tests" / "data" / "brats_TCGA-DU-7294"
SEQUENCES = {"t1": "TCGA-DU-7294_t1_bet", "t1ce": "TCGA-DU-7294_t1c_bet", "t2": "TCGA-DU-7294_t2_bet",
             "flair": "TCGA-DU-7294_fla_bet"}
SEGMENTATIONS = ("hnfnetv1-20", "isen-20", "sanet0-20", "scan-20", "yixinmpl-20")


def write_source(folder: Path) -> None:
    """8 BraTS 2020 case folders: the real case mirrored along each subset of the axes."""
    import SimpleITK as sitk

    def flipped(name: str, axes) -> "sitk.Image":
        image = sitk.ReadImage(str(CASE / f"{name}.nii.gz"))
        return sitk.Flip(image, [bool(a) for a in axes], flipAboutOrigin=False)

    for k in range(8):
        axes = [(k >> a) & 1 for a in range(3)]
        case = f"BraTS20_Training_{k + 1:03d}"
        (folder / case).mkdir(parents=True, exist_ok=True)
        for sequence, name in SEQUENCES.items():
            sitk.WriteImage(flipped(name, axes), str(folder / case / f"{case}_{sequence}.nii.gz"))
        sitk.WriteImage(flipped(SEGMENTATIONS[k % len(SEGMENTATIONS)], axes), str(folder / case / f"{case}_seg.nii.gz"))


def narrow_plans(preprocessed: Path) -> None:
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    kwargs = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [min(8 * 2 ** s, 64) for s in range(kwargs["n_stages"])]
    plans["configurations"][CONFIGURATION]["batch_size"] = 2
    plans["plans_name"] = PLANS
    (preprocessed / f"{PLANS}.json").write_text(json.dumps(plans, indent=2))


def run(out: Path) -> dict:
    """Data, plans and both trainings in ``out`` (what is there is kept); the results."""
    import os

    from nnunetv2_ciml.demo import nnunet_steps
    from nnunetv2_ciml.demo.dataset import nnunet_environment
    from nnunetv2_ciml.demo.iteration_log import ITERATION_LOG_NAME

    env = nnunet_environment(out, "cpu")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    raw = out / "nnUNet_raw"
    if not any(raw.glob(f"Dataset{DATASET_ID}_*")):
        source = out / "source"
        shutil.rmtree(source, ignore_errors=True)
        write_source(source)
        os.environ["nnUNet_raw"] = str(raw)
        from nnunetv2_ciml.dataset_conversion.brats import convert_brats
        convert_brats([source], DATASET_ID, num_processes=1)
    dataset = next(raw.glob(f"Dataset{DATASET_ID}_*")).name
    preprocessed = out / "nnUNet_preprocessed" / dataset
    if not (preprocessed / "nnUNetPlans.json").is_file():
        nnunet_steps.plan_and_preprocess(DATASET_ID, CONFIGURATION, env, logs / "plan_and_preprocess.log", False)
    narrow_plans(preprocessed)

    def train(name: str, trainer: str) -> None:
        fold = out / "nnUNet_results" / dataset / f"{trainer}__{PLANS}__{CONFIGURATION}" / "fold_0"
        if not (fold / "checkpoint_final.pth").is_file():
            nnunet_steps.train(DATASET_ID, CONFIGURATION, "0", trainer, PLANS, "cpu", 1, env,
                               logs / f"train_{trainer}.log", name, show_progress=False)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(train, n, t) for n, t in TRAINERS.items()]:
            future.result()
    results = {"plans": json.loads((preprocessed / f"{PLANS}.json").read_text())["configurations"][CONFIGURATION],
               "runs": {}}
    for name, trainer in TRAINERS.items():
        fold = out / "nnUNet_results" / dataset / f"{trainer}__{PLANS}__{CONFIGURATION}" / "fold_0"
        lines = [json.loads(x) for x in (fold / ITERATION_LOG_NAME).read_text().splitlines()[1:] if x.strip()]
        per_iteration = {k: [line[k] for line in lines] for k in ("epoch", "beta", "loss", "segmentation_loss",
                                                                  "weighted_kl", "kl")}
        epochs = sorted(set(per_iteration["epoch"]))
        per_epoch = {k: [float(np.mean([v for e, v in zip(per_iteration["epoch"], per_iteration[k]) if e == epoch]))
                         for epoch in epochs] for k in ("beta", "loss", "segmentation_loss", "weighted_kl", "kl")}
        rises = np.diff(per_epoch["loss"])
        results["runs"][name] = {"trainer": trainer, "per_epoch": per_epoch, "per_iteration": per_iteration,
                                 "largest_epoch_loss_rise": float(rises.max()),
                                 "epoch_of_largest_rise": int(rises.argmax()) + 1}
        print(f"{name:26s} largest epoch-to-epoch rise of the train loss {rises.max():+.4f} (epoch "
              f"{int(rises.argmax()) + 1}); KL at epoch 0 {per_epoch['kl'][0]:.1f}, at the end {per_epoch['kl'][-1]:.2f}")
    results["plans"] = {k: results["plans"][k] for k in ("patch_size", "batch_size")}
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for (name, run), colour in zip(results["runs"].items(), ("#d62828", "#8d99ae")):
        it = run["per_iteration"]
        x = np.arange(len(it["loss"]))
        smooth = np.convolve(it["loss"], np.ones(5) / 5, mode="same")
        axes[0].plot(x, it["loss"], color=colour, lw=0.4, alpha=0.5)
        axes[0].plot(x[2:-2], smooth[2:-2], color=colour, lw=1.2, label=name)
        axes[1].semilogy(x, np.maximum(it["weighted_kl"], 1e-6), color=colour, lw=1, label=f"{name}: beta x KL")
        axes[1].semilogy(x, it["kl"], color=colour, lw=1, ls="--", label=f"{name}: KL")
        axes[2].plot(run["per_epoch"]["loss"], color=colour, marker="o", ms=3, label=name)
    axes[0].set_xlabel("training iteration (10 per epoch)")
    axes[0].set_ylabel("train loss (5-iteration mean)")
    axes[1].set_xlabel("training iteration")
    axes[1].set_ylabel("nats per voxel")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("train loss, mean of the epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("nnUNetTrainerCIML's KL schedule on BraTS-like data (4 MRI sequences, regions WT/TC/ET), 1000 x 250 "
                 "iterations compressed to 20 x 10, beta 1e-3", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path, help="draw the curves from OUT's results into this PNG")
    args = parser.parse_args(argv)
    results_file = args.out.resolve() / "kl_schedule_brats.json"
    if not args.plot:
        results_file.write_text(json.dumps(run(args.out.resolve())) + "\n")
    plot(json.loads(results_file.read_text()), args.plot or results_file.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
