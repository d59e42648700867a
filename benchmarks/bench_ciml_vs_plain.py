"""CIML vs plain nnU-Net at equal plans: counted costs, training step, memory, sliding-window inference.

Both networks come from the same plans: the U-Net topology that nnU-Net's planner derives for a patch
size and spacing (``get_pool_and_conv_props``, nnU-Net's feature widths), and for CIML the architecture
each trainer writes into its plans (``nnUNetTrainerCIML.network_architecture``: widths, messages, recomputed
stages). Plans: BraTS (4 modalities, regions), PET/CT (2 modalities, labels) at nnU-Net's GPU patch sizes or
smaller CPU ones, and the ShapeComposition demo's 2D plans.

``--count`` (seconds, no arithmetic, machine-independent): per model on the meta device
(``nnunetv2_ciml.costs``), convolution FLOPs of one sample, bytes of the activations autograd keeps for one
training batch (the plans' batch size, deep supervision) and parameters, at nnU-Net's GPU patch sizes.

Otherwise each model runs in a fresh process so that peak memory is its own:

- step time: forward + nnU-Net's loss (+ beta * KL for CIML) + backward + SGD step, median of
  ``--steps`` after warm-up, autocast on CUDA as nnU-Net trains;
- memory: on CUDA, ``max_memory_allocated`` over the training steps; on CPU, where peak RSS growth is
  too noisy to compare, the bytes a training step must hold: activations kept for backward by one forward pass
  plus weights, gradients and SGD momentum (3 x parameter bytes). The activations are also printed on their
  own on both devices;
- inference: ``nnUNetPredictor.predict_sliding_window_return_logits`` on a volume of 2x the patch per axis
  (nnU-Net's own tiling and Gaussian weighting, no mirroring).

The time users feel is an epoch of ``nnUNetv2_train`` with nnU-Net's augmentation workers:
``benchmarks/bench_epoch_time.py``.

    python benchmarks/bench_ciml_vs_plain.py --count                    # counted costs of every model
    python benchmarks/bench_ciml_vs_plain.py --patch 64 --setups brats  # CPU times at 64^3
    python benchmarks/bench_ciml_vs_plain.py --patch cuda --steps 1 --setups brats --models plain ciml  # 128^3
    python benchmarks/bench_ciml_vs_plain.py --device cuda              # nnU-Net-sized patches on a GPU
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List

# name: modalities, outputs (labels or regions), spacing (mm), patch (CPU), patch (GPU), widest stage, batch
SETUPS = {
    "brats": dict(channels={"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
                  labels={"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
                  regions_class_order=[1, 2, 3], spacing=[1.0, 1.0, 1.0], cpu_patch=[32, 32, 32],
                  cuda_patch=[128, 128, 128], max_features=320, batch_size=2),
    "petct": dict(channels={"0": "CT", "1": "PET"}, labels={"background": 0, "lesion": 1}, regions_class_order=None,
                  spacing=[3.0, 2.0, 2.0], cpu_patch=[24, 48, 48], cuda_patch=[112, 160, 160], max_features=320,
                  batch_size=2),
    # nnunetv2_ciml demo: nnU-Net's 2D plans of its generated data, features capped at 128, batch 5
    "demo": dict(channels={"0": "A", "1": "B", "2": "C"}, labels={"background": 0, "circle": 1, "square": 2},
                 regions_class_order=None, spacing=[1.0, 1.0], cpu_patch=[48, 48], cuda_patch=[48, 48],
                 max_features=128, batch_size=5,
                 ciml={"subtasks": {"circle": {"primary": "A", "outputs": ["background", "circle"]},
                                    "square": {"primary": "B", "outputs": ["square"]}}}),
}
# model: (the trainer whose network it is, class attributes changed in a subclass); None: plain nnU-Net
MODELS = {"plain": None,
          "ciml": ("nnUNetTrainerCIML", {}),
          "ciml_groupedBranches": ("nnUNetTrainerCIML_groupedBranches", {}),
          "ciml_fullWidth": ("nnUNetTrainerCIML_fullWidth", {}),
          "ciml_groupedBranches_fullWidth": ("nnUNetTrainerCIML_groupedBranches", {"branch_width_factor": 1.0}),
          "ciml_MACmatched": ("nnUNetTrainerCIML_MACmatched", {}),
          "ciml_narrowFullResEncoders": ("nnUNetTrainerCIML_fullWidth", {"encoder_stage_factors": (0.25,)}),
          "ciml_narrowFullResDecoders": ("nnUNetTrainerCIML_fullWidth", {"decoder_stage_factors": (0.25,)}),
          "ciml_inputEmbedding": ("nnUNetTrainerCIML", {"modality_conditioning": "input_embedding"}),
          "ciml_noMessages": ("nnUNetTrainerCIML_noMessages", {}),
          "ciml_noRecompute": ("nnUNetTrainerCIML", {"recompute_activations": False})}


def plans_for(setup: dict, patch: List[int]) -> dict:
    """A ``plans`` dict with one configuration (``3d_fullres`` or ``2d``), its topology from nnU-Net's planner."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernels, patch, _ = get_pool_and_conv_props(setup["spacing"], patch, 4, 999999)
    n, dim = len(strides), len(patch)
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": n, "features_per_stage": [min(32 * 2 ** s, setup["max_features"]) for s in range(n)],
                        "conv_op": f"torch.nn.modules.conv.Conv{dim}d", "kernel_sizes": kernels, "strides": strides,
                        "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    return {"dataset_name": "Dataset999_Bench", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
            "transpose_forward": list(range(dim)), "transpose_backward": list(range(dim)),
            "label_manager": "LabelManager", "original_median_spacing_after_transp": setup["spacing"],
            "configurations": {configuration_name(setup): {
                "data_identifier": "bench", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": setup["batch_size"], "patch_size": [int(p) for p in patch], "spacing": setup["spacing"],
                "architecture": architecture, "batch_dice": False}}}


def configuration_name(setup: dict) -> str:
    return "2d" if len(setup["spacing"]) == 2 else "3d_fullres"


def model_plans(setup_name: str, model: str, patch: List[int]):
    """(plans, dataset.json, input channels, output channels) of ``model`` on ``setup_name``'s plans."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_ciml.decomposition import resolve_decomposition
    from nnunetv2_ciml.registration import trainer_class

    setup = SETUPS[setup_name]
    plans = plans_for(setup, patch)
    config = plans["configurations"][configuration_name(setup)]
    dataset_json = {"channel_names": setup["channels"], "labels": setup["labels"], "file_ending": ".nii.gz"}
    if setup["regions_class_order"]:
        dataset_json["regions_class_order"] = setup["regions_class_order"]
    if "ciml" in setup:
        dataset_json["ciml"] = setup["ciml"]
    num_in = len(setup["channels"])
    num_out = PlansManager(plans).get_label_manager(dataset_json).num_segmentation_heads
    if MODELS[model] is not None:
        name, changes = MODELS[model]
        trainer = trainer_class(name)
        if changes:  # the study's variants, and a subclass that wants speed over memory (ciml_noRecompute)
            trainer = type(f"{name}_{model}", (trainer,), changes)
        decomposition, _ = resolve_decomposition(dataset_json, num_in)
        config["architecture"] = trainer.network_architecture(config["architecture"], decomposition,
                                                              config["patch_size"], num_out, config["batch_size"])
    return plans, dataset_json, num_in, num_out


def count(setups: List[str], models: List[str]) -> Dict[str, Dict[str, dict]]:
    """Counted costs (``nnunetv2_ciml.costs``) of every model on every setup at nnU-Net's GPU patch size."""
    from nnunetv2_ciml.costs import network_cost

    results: Dict[str, Dict[str, dict]] = {}
    for setup_name in setups:
        setup = SETUPS[setup_name]
        results[setup_name] = {}
        for model in models:
            plans, _, num_in, num_out = model_plans(setup_name, model, setup["cuda_patch"])
            config = plans["configurations"][configuration_name(setup)]
            cost = network_cost(config["architecture"], num_in, num_out, config["patch_size"], config["batch_size"])
            kwargs = config["architecture"]["arch_kwargs"]
            results[setup_name][model] = {
                "patch": config["patch_size"], "batch_size": config["batch_size"], "conv_flops": cost.conv_flops,
                "activation_bytes": cost.activation_bytes, "parameters": cost.parameters,
                "features": kwargs["features_per_stage"], "decoder_features": kwargs.get("decoder_features_per_stage"),
                "recomputed_stages": kwargs.get("recomputed_stages")}
    print(f"{'setup':6s} {'model':27s} {'FLOPs':>6s} {'activ.':>6s} {'params':>6s}  activations, branch / decoder "
          f"widths, recomputed stages")
    for setup_name, per_model in results.items():
        plain = per_model.get("plain")
        for model, r in per_model.items():
            ratios = "".join(f" {r[k] / plain[k]:6.2f}" if plain else "      -"
                             for k in ("conv_flops", "activation_bytes", "parameters"))
            print(f"{setup_name:6s} {model:27s}{ratios}  {r['activation_bytes'] / 2 ** 30:6.2f} GiB, "
                  f"{r['features']} / {r['decoder_features']}, {r['recomputed_stages']}")
    return results


def forward_profile(network, tile, top: int = 8) -> Dict[str, float]:
    """Self time in ms per operator of one inference forward pass on ``tile`` (torch.profiler), the ``top``
    largest, plus ``total``: where the sliding-window inference spends its time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tile.is_cuda else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        network(tile)
    events = [(e.key, (e.self_device_time_total if tile.is_cuda else e.self_cpu_time_total) / 1e3)
              for e in prof.key_averages()]
    events.sort(key=lambda e: -e[1])
    return {**{k: round(v, 2) for k, v in events[:top]}, "total": round(sum(v for _, v in events), 2)}


def worker(setup_name: str, model: str, device_name: str, steps: int, compile_: bool, patch_kind: str,
           with_profile: bool = False, with_inference: bool = True) -> Dict[str, float]:
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_ciml.costs import saved_activation_bytes
    from nnunetv2_ciml.training.loss import KLRegularizedLoss

    torch.manual_seed(0)
    device = torch.device(device_name)
    setup = SETUPS[setup_name]
    patch = setup[f"{patch_kind}_patch"] if patch_kind in ("cpu", "cuda") else [int(patch_kind)] * len(setup["spacing"])
    plans, dataset_json, num_in, num_out = model_plans(setup_name, model, patch)
    config_name = configuration_name(setup)
    config = plans["configurations"][config_name]
    plans_manager = PlansManager(plans)
    label_manager = plans_manager.get_label_manager(dataset_json)
    arch = config["architecture"]
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     num_in, num_out, allow_init=True, deep_supervision=True).to(device)
    params = sum(p.numel() for p in network.parameters())
    train_net = torch.compile(network) if compile_ else network

    patch, batch = config["patch_size"], config["batch_size"]
    n_ds = len(arch["arch_kwargs"]["strides"]) - 1
    scales = np.cumprod(np.array(arch["arch_kwargs"]["strides"]), axis=0)[:n_ds]
    if label_manager.has_regions:
        seg_loss = DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False},
                                   use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
        targets = [(torch.rand(batch, num_out, *[p // s for p, s in zip(patch, sc)], device=device) > 0.5).float()
                   for sc in scales]
    else:
        seg_loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                  weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
        targets = [torch.randint(0, num_out, (batch, 1, *[p // s for p, s in zip(patch, sc)]), device=device).float()
                   for sc in scales]
    weights = np.array([1 / 2 ** i for i in range(n_ds)])
    weights[-1] = 0
    loss_fn = DeepSupervisionWrapper(seg_loss, weights / weights.sum())
    if model != "plain":
        loss_fn = KLRegularizedLoss(loss_fn, lambda: network.kl)
        loss_fn.beta = 1e-3
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    data = torch.randn(batch, num_in, *patch, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = loss_fn(train_net(data), targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            optimizer.step()

    network.train()
    step()  # warm-up (and compilation)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        activations = saved_activation_bytes(lambda: network(data), network.parameters())
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else activations + 3 * sum(p.numel() * p.element_size() for p in network.parameters()))
    kl = float(network.kl) if model != "plain" else 0.0  # also shows that compiled forwards update it

    network.eval()
    network.decoder.deep_supervision = False  # as nnU-Net's trainer does before inference
    inference = None
    if with_inference:
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                    allow_tqdm=False)
        predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration(config_name), None,
                                        dataset_json, "benchmark", None)
        volume = torch.randn(num_in, *[2 * p for p in patch])  # 2x the patch per axis: 27 tiles at step 0.5
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            network(data[:1])  # warm-up: every tile has this shape
        sync()
        t = time.perf_counter()
        predictor.predict_sliding_window_return_logits(volume)
        sync()
        inference = time.perf_counter() - t
    profiled = forward_profile(network, data[:1]) if with_profile else None
    return {"profile": profiled, "step_s": statistics.median(times), "peak_mem_bytes": float(peak), "params": float(params),
            "activation_bytes": float(activations),
            "inference_s": inference, "kl": kl, "patch": patch, "features": arch["arch_kwargs"]["features_per_stage"],
            "max_rss_bytes": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", action="store_true",
                        help="only count FLOPs, kept activations and parameters on the meta device (seconds)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        help="default: every model with --count, else plain ciml ciml_noMessages. ciml_*: the network "
                             "of nnUNetTrainerCIML_*, or of the width study's variant; ciml_noMessages: the branches' "
                             "own cost; ciml_noRecompute: nnUNetTrainerCIML without recomputed stages (the price of "
                             "recomputation)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--patch", help="cpu, cuda (nnU-Net's GPU patch; minutes per model on a CPU) or an edge "
                                        "length N for N^3 (N^2 in 2D); default: the device's")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (CUDA)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--profile", action="store_true",
                        help="also print each model's operators by self time in one inference forward pass")
    parser.add_argument("--no-inference", action="store_true",
                        help="time the training step only (nnU-Net-sized patches on a CPU: the volume takes long)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.device, args.steps, args.compile, args.patch, args.profile,
                                not args.no_inference)))
        return
    if args.count:
        results = count(args.setups, args.models or list(MODELS))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"counted_on": "meta", "results": results}, f, indent=2)
        return
    args.models = args.models or ["plain", "ciml", "ciml_noMessages"]

    results: Dict[str, Dict[str, dict]] = {}
    for setup in args.setups:
        results[setup] = {}
        for model in args.models:
            cmd = [sys.executable, __file__, "--worker", setup, model, "--device", args.device, "--steps",
                   str(args.steps), "--patch", args.patch or args.device] + (["--compile"] if args.compile else []) \
                + (["--profile"] if args.profile else []) + (["--no-inference"] if args.no_inference else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, nnUNet_compile="f"))
            if out.returncode != 0:
                sys.exit(f"{setup}/{model} failed:\n{out.stderr[-3000:]}")
            results[setup][model] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[setup][model]
            inference = f"{r['inference_s']:.2f} s" if r["inference_s"] is not None else "not timed"
            print(f"{setup:6s} {model:27s} patch {r['patch']}: step {r['step_s']:.3f} s, "
                  f"memory {r['peak_mem_bytes'] / 2 ** 20:.0f} MiB (activations "
                  f"{r['activation_bytes'] / 2 ** 20:.0f} MiB; process peak {r['max_rss_bytes'] / 2 ** 30:.1f} GiB), "
                  f"params {r['params'] / 1e6:.2f} M, inference {inference}, KL {r['kl']:.4f}", flush=True)
            if r["profile"]:
                print("    one inference forward, self ms per operator: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in r["profile"].items()), flush=True)

    print(f"\nratios to plain nnU-Net, measured in this run on {args.device}")
    print(f"{'setup':6s} {'model':27s} {'step':>6s} {'memory':>7s} {'activations':>11s} {'params':>7s} "
          f"{'inference':>9s}")
    for setup, per_model in results.items():
        plain = per_model.get("plain")
        for model, r in per_model.items():
            if model == "plain" or plain is None:
                continue
            print(f"{setup:6s} {model:27s} {r['step_s'] / plain['step_s']:6.2f} "
                  f"{r['peak_mem_bytes'] / plain['peak_mem_bytes']:7.2f} "
                  f"{r['activation_bytes'] / plain['activation_bytes']:11.2f} {r['params'] / plain['params']:7.2f} "
                  + (f"{r['inference_s'] / plain['inference_s']:9.2f}" if r["inference_s"] else f"{'-':>9s}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
