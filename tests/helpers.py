"""What the tests share (the one helpers module; no test imports from another test file).

- images: :func:`write_image`, :func:`write_labels`, :func:`read_array`, :func:`assert_same_geometry`, :func:`tree_digest`;
- references computed independently of the package: :func:`brute_force_hd95`, :func:`conv_macs_by_hooks`;
- dataset.json and plans of tiny networks: ``REGIONS``, ``LABELS``, :func:`plain_architecture`;
- tiny synthetic nnU-Net datasets: :func:`make_dataset`, :func:`shrink_plans`;
- the nnU-Net environment: :func:`nnunet_environment`, :func:`run_nnunet`, :func:`plan_and_preprocess`,
  :func:`train_in_process`, :func:`untrained_models` (model folders in seconds, for the fast tests);
- the network internals that some tests must know (:func:`message_modules`, :func:`message_latent_layers`,
  :func:`message_projection`; :func:`message_slots` and :func:`set_message_projections` build on them): the
  only place that knows how ``CIMLUNet`` stores its messages.
"""
import contextlib
import hashlib
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from scipy.spatial.distance import cdist
from torch import nn

# --------------------------------------------------------------------------------------------- images


def write_image(path, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                origin: Optional[Sequence[float]] = None, direction: Optional[Sequence[float]] = None,
                dtype=None) -> None:
    """Write ``array`` (SimpleITK order: ``(Z, Y, X)``) with ``spacing``/``origin`` in SimpleITK's (x, y, z) order."""
    image = sitk.GetImageFromArray(np.asarray(array) if dtype is None else np.asarray(array).astype(dtype))
    image.SetSpacing(tuple(float(s) for s in spacing))
    if origin is not None:
        image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(image, str(path))


def write_labels(path, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 origin: Optional[Sequence[float]] = None, direction: Optional[Sequence[float]] = None,
                 dtype=np.uint8) -> None:
    """:func:`write_image` of a label map, as ``dtype`` (uint8 unless told)."""
    write_image(path, array, spacing, origin, direction, dtype)


def read_array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def assert_same_geometry(path, reference, allowed_labels=None) -> None:
    """Same size, spacing, origin and direction as ``reference``; values within ``allowed_labels`` if given."""
    a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(reference))
    assert a.GetSize() == b.GetSize(), (Path(path).name, a.GetSize(), b.GetSize())
    assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin(), Path(path).name
    assert a.GetDirection() == b.GetDirection(), Path(path).name
    if allowed_labels is not None:
        assert set(np.unique(sitk.GetArrayFromImage(a)).tolist()) <= set(allowed_labels), Path(path).name


def tree_digest(root: Path) -> str:
    """Hash of every file's relative path and content below ``root`` (symlinks followed)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# -------------------------------------------------------------------------------- independent references


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """HD95 of two non-empty masks: surfaces by explicit neighbour shifts, all pairwise distances (scipy cdist)."""
    def surface_points(m):
        padded = np.pad(m, 1, constant_values=False)
        inner = np.ones_like(m)
        for axis in range(m.ndim):
            for shift in (-1, 1):
                inner &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(m.ndim))]
        return np.argwhere(m & ~inner) * np.asarray(spacing, dtype=float)

    pa, pb = surface_points(a.astype(bool)), surface_points(b.astype(bool))
    d_ab = np.concatenate([cdist(pa[i:i + 2000], pb).min(1) for i in range(0, len(pa), 2000)])
    d_ba = np.concatenate([cdist(pb[i:i + 2000], pa).min(1) for i in range(0, len(pb), 2000)])
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


def conv_macs_by_hooks(network: nn.Module, x: torch.Tensor, exclude: Sequence[nn.Module] = ()) -> int:
    """Multiply-accumulates of every ``nn.Conv*``/``nn.ConvTranspose*`` module in one forward of ``x``, counted
    from the shapes the modules see (forward hooks), leaving out modules inside ``exclude``.

    Convolution: output voxels x out channels x (in channels / groups) x kernel volume; transposed
    convolution: input voxels x in channels x (out channels / groups) x kernel volume. Works on the
    meta device. Independent of ``torch.utils.flop_counter`` (what ``nnunetv2_ciml.planning`` uses).
    """
    excluded = {id(m) for e in exclude for m in e.modules()}
    total = [0]

    def count(module, inputs, output):
        k = int(np.prod(module.kernel_size))
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            total[0] += inputs[0][0, 0].numel() * module.in_channels * (module.out_channels // module.groups) * k
        else:
            total[0] += output[0, 0].numel() * module.out_channels * (module.in_channels // module.groups) * k

    hooks = [m.register_forward_hook(count) for m in network.modules()
             if isinstance(m, nn.modules.conv._ConvNd) and id(m) not in excluded]
    try:
        with torch.no_grad():
            network(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0] * x.shape[0]


# the modules whose trainers nnU-Net finds (nnunetv2_ciml/_nnunet_ext/nnunetv2_ciml_trainers.py re-exports them)
TRAINER_MODULES = ("nnunetv2_ciml.training.trainers", "nnunetv2_ciml.training.modality_dropout",
                   "nnunetv2_ciml.demo.trainers", "nnunetv2_ciml.benchmarking", "nnunetv2_ciml.cpu_test_trainers")


# ------------------------------------------------------------------- dataset.json and plain U-Net plans

REGIONS = {"channel_names": {"0": "T1ce", "1": "T2", "2": "FLAIR"},
           "labels": {"background": 0, "whole tumor": [1, 2], "tumor core": [2]}, "regions_class_order": [1, 2]}
LABELS = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "GTVp": 1, "GTVn": 2}}


def plain_architecture(dim: int, n_stages: int = 3, residual: bool = False, base: int = 4) -> dict:
    """The ``architecture`` entry nnU-Net's planners write, for a tiny ``PlainConvUNet``/``ResidualEncoderUNet``."""
    conv = f"torch.nn.modules.conv.Conv{dim}d"
    kwargs = {"n_stages": n_stages, "features_per_stage": [base * 2 ** s for s in range(n_stages)], "conv_op": conv,
              "kernel_sizes": [[3] * dim] * n_stages, "strides": [[1] * dim] + [[2] * dim] * (n_stages - 1),
              "n_conv_per_stage_decoder": [1] * (n_stages - 1), "conv_bias": True,
              "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
              "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    kwargs["n_blocks_per_stage" if residual else "n_conv_per_stage"] = [1] * n_stages
    name = "ResidualEncoderUNet" if residual else "PlainConvUNet"
    return {"network_class_name": f"dynamic_network_architectures.architectures.unet.{name}", "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def nnunet_brats_architecture(residual: bool = False) -> dict:
    """The ``architecture`` nnU-Net's default planner writes for BraTS 3d_fullres (patch 128^3, 1 mm): 6 stages
    of 32 to 320 features, 3^3 kernels, stride 2 below full resolution (ResEnc: its M preset's blocks)."""
    arch = plain_architecture(3, n_stages=6, residual=residual, base=32)
    kwargs = arch["arch_kwargs"]
    kwargs["features_per_stage"] = [min(32 * 2 ** s, 320) for s in range(6)]
    kwargs["n_conv_per_stage_decoder"] = [2] * 5
    kwargs["n_blocks_per_stage" if residual else "n_conv_per_stage"] = [1, 3, 4, 6, 6, 6] if residual else [2] * 6
    return arch


def build_ciml_network(dataset_json: dict, dim: int = 3, residual: bool = False, deep_supervision: bool = True,
                       messages: bool = True, patch=None, width: Optional[float] = 0.75, **planning):
    """A tiny CIMLUNet built the way nnU-Net builds it (plans entry -> ``get_network_from_plans``); ``planning``:
    further arguments of :func:`~nnunetv2_ciml.planning.ciml_architecture`."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunetv2_ciml.decomposition import resolve_decomposition
    from nnunetv2_ciml.planning import ciml_architecture

    d, _ = resolve_decomposition(dataset_json)
    num_classes = len(d.output_names)
    patch = patch or (16,) * dim
    arch = ciml_architecture(plain_architecture(dim, residual=residual), d, patch, num_classes, messages=messages,
                             width_factor=width, **planning)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 len(d.modalities), num_classes, allow_init=True, deep_supervision=deep_supervision)
    return net, arch


def hand_made_trainer(cls, nnunet_env, dataset_json: dict = REGIONS):
    """A trainer of class ``cls`` on a hand-made 3D plans dict (``plain_architecture(3, base=16)``, patch 16^3) and
    ``dataset_json``, on the CPU: for checks that stop before the planner's outputs matter. Returns (trainer, plans)."""
    plans = {"dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans", "continue_training": False,
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "label_manager": "LabelManager", "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
             "configurations": {"3d_fullres": {"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor",
                                               "batch_size": 2, "patch_size": [16, 16, 16], "spacing": [1, 1, 1],
                                               "architecture": plain_architecture(3, base=16), "batch_dice": False}}}
    return cls(plans, "3d_fullres", 0, dict(dataset_json, file_ending=".nii.gz"), torch.device("cpu")), plans


# --------------------------------------------------------------------- tiny synthetic nnU-Net datasets


def _blob(shape, rng, radius) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array([rng.uniform(radius + 1, s - radius - 1) for s in shape]).reshape(-1, *[1] * len(shape))
    return np.sqrt(((grid - centre) ** 2).sum(0)) <= radius


def make_dataset(raw: Path, dataset_id: int, regions: bool, num_cases: int = 6, shape=(20, 20, 20),
                 num_test: int = 2, seed: int = 0) -> Path:
    """Write ``Dataset{id}_...``: whole lesion bright in channel "FLAIR"/"CT", its core in "T1ce"/"PET".

    Regions: channels (T1ce, T2, FLAIR), labels 1 = edema, 2 = core, regions whole tumor (1, 2) and
    tumor core (2). Labels: channels (CT, PET), labels 1 = GTVp (the large blob), 2 = GTVn.
    2D datasets (``len(shape) == 2``) are stored with a singleton z.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    rng = np.random.default_rng(seed)
    name = f"Dataset{dataset_id:03d}_{'Regions' if regions else 'Labels'}"
    root = raw / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(num_cases + num_test):
        r = min(shape) / 4
        whole = _blob(shape, rng, r)
        core = whole & _blob(shape, rng, r) if regions else _blob(shape, rng, r / 2) & ~whole
        core |= whole & (np.add.reduce(np.indices(shape), 0) % 7 == 0) if regions else core
        seg = np.zeros(shape, np.uint8)
        seg[whole] = 1
        seg[core] = 2
        noise = lambda: rng.normal(0, 0.3, shape)  # noqa: E731
        channels = ([core + noise(), 0.3 * whole + noise(), whole + 0.2 * core + noise()] if regions
                    else [whole + 0.2 * core + noise(), core + 0.3 * whole + noise()])
        case = f"case_{i:03d}"
        folder, is_train = ("imagesTr", True) if i < num_cases else ("imagesTs", False)
        for c, img in enumerate(channels):
            arr = img.astype(np.float32)
            write_image(root / folder / f"{case}_{c:04d}.nii.gz", arr[None] if len(shape) == 2 else arr)
        if is_train:
            write_image(root / "labelsTr" / f"{case}.nii.gz", seg[None] if len(shape) == 2 else seg)
    if regions:
        generate_dataset_json(str(root), {0: "T1ce", 1: "T2", 2: "FLAIR"},
                              {"background": 0, "whole tumor": (1, 2), "tumor core": (2,)},
                              num_cases, ".nii.gz", regions_class_order=(1, 2), dataset_name=name)
    else:
        generate_dataset_json(str(root), {0: "CT", 1: "PET"}, {"background": 0, "GTVp": 1, "GTVn": 2},
                              num_cases, ".nii.gz", dataset_name=name)
    return root


def shrink_plans(preprocessed: Path, dataset_name: str, configuration: str, base_features: int = 8) -> None:
    """Narrow the planned U-Net (as a user may edit plans) so that CPU tests stay fast."""
    plans_file = preprocessed / dataset_name / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    kwargs = plans["configurations"][configuration]["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [base_features * 2 ** s for s in range(kwargs["n_stages"])]
    plans["configurations"][configuration]["batch_size"] = 2
    plans_file.write_text(json.dumps(plans, indent=2))


# ------------------------------------------------------------------------------ the nnU-Net environment


def nnunet_environment(root: Path) -> Dict[str, str]:
    """The process environment with nnU-Net's three folders under ``root`` and CPU-test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_compile="f", nnUNet_def_n_proc="1",
               nnUNet_n_proc_DA="1")  # 0 breaks nnU-Net's preprocessing; training sets 0 itself
    return env


def run_nnunet(env: Dict[str, str], *args: str, timeout: int = 900) -> str:
    """Run an nnU-Net (or our) command line; its stdout, or a failure with the tail of its output."""
    out = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout


@contextlib.contextmanager
def nnunet_variables(env: Dict[str, str]) -> Iterator[None]:
    """``env``'s ``nnUNet_*`` variables in this process for the duration (nnU-Net reads them lazily)."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            if key.startswith("nnUNet_"):
                mp.setenv(key, value)
        yield


def plan_and_preprocess(env: Dict[str, str], dataset_id: int, configuration: str) -> None:
    """nnU-Net's fingerprint, planning and preprocessing (its Python API, one process)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    with nnunet_variables(env):
        extract_fingerprints([dataset_id], num_processes=1)
        plan_experiments([dataset_id])
        preprocess([dataset_id], configurations=(configuration,), num_processes=(1,))


def train_in_process(env: Dict[str, str], dataset_id: int, configuration: str, trainer: str, **kwargs) -> None:
    """``nnUNetv2_train`` through its Python API (``run_training``) on one CPU thread.

    The CLI's ``torch.set_num_threads(cpu_count())`` makes tiny runs several times slower on a busy machine.
    """
    from nnunetv2.run.run_training import run_training

    threads = torch.get_num_threads()
    with nnunet_variables(dict(env, nnUNet_n_proc_DA="0")):
        torch.set_num_threads(1)
        try:
            run_training(str(dataset_id), configuration, 0, trainer, device=torch.device("cpu"), **kwargs)
        finally:
            torch.set_num_threads(threads)


def _write_fingerprint(raw: Path, preprocessed: Path) -> None:
    """The ``dataset_fingerprint.json`` nnU-Net's extractor would write for a dataset of :func:`make_dataset` (its
    process pool takes half a minute to start on a busy 2-core machine); intensities are those the z-score of the
    channels ignores."""
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

    labels = sorted((raw / "labelsTr").iterdir())
    shape = sitk.ReadImage(str(labels[0])).GetSize()[::-1]
    channels = load_json(str(raw / "dataset.json"))["channel_names"]
    intensities = {"max": 2.0, "mean": 0.5, "median": 0.5, "min": -1.0, "percentile_00_5": -0.8,
                   "percentile_99_5": 1.8, "std": 0.5}
    save_json({"foreground_intensity_properties_per_channel": {c: intensities for c in channels},
               "median_relative_size_after_cropping": 1.0, "shapes_after_crop": [list(shape)] * len(labels),
               "spacings": [[1.0] * len(shape)] * len(labels)}, str(preprocessed / "dataset_fingerprint.json"))


def set_output_bias(network: nn.Module, value: float, subtask: Optional[int] = None) -> None:
    """The output bias of a subtask's decoder (default: every subtask's): 10 predicts its outputs on every voxel,
    -10 nothing."""
    for decoder in network.decoder if subtask is None else [network.decoder[subtask]]:
        for layer in decoder.seg_layers:
            torch.nn.init.constant_(layer.bias, value)


def untrained_models(root: Path, trainers: Sequence[str], dataset_id: int = 962) -> Tuple[Path, Dict[str, Path]]:
    """(raw dataset folder, ``{trainer: model folder}``): model folders whose ``fold_0/checkpoint_final.pth`` holds
    the trainer's initial weights, built in seconds by nnU-Net's own code on the 2D region dataset of
    :func:`make_dataset` (channels T1ce, T2, FLAIR; test cases case_004, case_005): a fingerprint written for it
    (:func:`_write_fingerprint`), nnU-Net's planner, its preprocessor on two cases (the trainer needs a preprocessed
    folder), the trainer's ``initialize`` and ``save_checkpoint``, plans.json and dataset.json saved as
    ``on_train_start`` saves them. CIML networks get random messages (they start at exactly zero) and predict every
    output everywhere, so that there is something to explain."""
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_ciml.network import CIMLUNet, unwrap

    env = nnunet_environment(root)
    raw = make_dataset(root / "raw", dataset_id, regions=True, shape=(32, 32), num_cases=4, num_test=2)
    preprocessed = Path(env["nnUNet_preprocessed"]) / raw.name
    preprocessed.mkdir(parents=True)
    _write_fingerprint(raw, preprocessed)
    models = {}
    with nnunet_variables(env), contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates every step
        plan_experiments([dataset_id])
        shrink_plans(Path(env["nnUNet_preprocessed"]), raw.name, "2d")
        save_json(load_json(str(raw / "dataset.json")), str(preprocessed / "dataset.json"), sort_keys=False)
        plans_manager = PlansManager(str(preprocessed / "nnUNetPlans.json"))
        configuration = plans_manager.get_configuration("2d")
        preprocessor = configuration.preprocessor_class(verbose=False)
        (preprocessed / configuration.data_identifier).mkdir()
        for case in ("case_000", "case_001"):
            preprocessor.run_case_save(str(preprocessed / configuration.data_identifier / case),
                                       [str(raw / "imagesTr" / f"{case}_{c:04d}.nii.gz") for c in range(3)],
                                       str(raw / "labelsTr" / f"{case}.nii.gz"), plans_manager, configuration,
                                       load_json(str(raw / "dataset.json")))
        for name in trainers:
            trainer = get_trainer_from_args(str(dataset_id), "2d", 0, name, device=torch.device("cpu"))
            trainer.initialize()
            trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the mirroring axes
            network = unwrap(trainer.network)
            if isinstance(network, CIMLUNet):
                randomize_messages(network)
                set_output_bias(network, 10.0)
            save_json(trainer.plans_manager.plans, str(Path(trainer.output_folder_base) / "plans.json"),
                      sort_keys=False)
            save_json(trainer.dataset_json, str(Path(trainer.output_folder_base) / "dataset.json"), sort_keys=False)
            trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
            models[name] = Path(trainer.output_folder_base)
    return raw, models


# ------------------------------------------------------------------------------------ network internals
# The only place the tests know how CIMLUNet stores its messages: adapt these when that changes.


def compare_branches_and_backprop(network: nn.Module, features: Sequence[torch.Tensor],
                                  per_modality: Sequence[Sequence[torch.Tensor]]) -> None:
    """Assert that the network's stage outputs ``features`` ``(B, M * C_s, ...)`` equal the per-modality reference
    outputs ``per_modality[m][s]`` block by block, then backpropagate one random weighting of the stages through
    both, so that the caller can compare the gradients of the network and of the references."""
    modalities = len(per_modality)
    for s, f in enumerate(features):
        for m in range(modalities):
            torch.testing.assert_close(network.modality_features(f, s, m), per_modality[m][s])
    weights = [torch.randn_like(f) for f in features]
    sum((w * f).sum() for w, f in zip(weights, features)).backward()
    sum((w.chunk(modalities, 1)[m] * f).sum() for m in range(modalities)
        for w, f in zip(weights, per_modality[m])).backward()


def message_modules(network: nn.Module) -> List[nn.Module]:
    """Every module that computes messages (to leave out of branch costs, count recomputations, ...)."""
    from nnunetv2_ciml.network import StageMessages

    return [m for m in network.modules() if isinstance(m, StageMessages)]


def message_latent_layers(network: nn.Module) -> Dict[int, Tuple[nn.Module, Dict[object, slice]]]:
    """``stage -> (layer, {pair: channels})``: the layer whose output is the stacked scaled latents ``u``
    ``(B, P * L, *spatial)`` of all messages at that stage (the Grad-CAM layer of the messages), and the
    channels of ``u`` that belong to each :class:`~nnunetv2_ciml.network.MessagePair`."""
    return {s: (network.messages[str(s)].message,
                {p: network.messages[str(s)].latent_slice(p) for p in network.message_pairs})
            for s in network.message_stages}


def randomize_messages(network: nn.Module) -> None:
    """Nonzero message projections (they start at exactly zero)."""
    for module in message_modules(network):
        torch.nn.init.normal_(module.project.weight, std=0.5)


def message_projection(network: nn.Module, stage: int, pair) -> torch.Tensor:
    """The projection weight ``W`` of ``pair`` (a :class:`~nnunetv2_ciml.network.MessagePair`) at ``stage``:
    a view, to edit in place."""
    return network.messages[str(stage)].projection(pair)


def message_slots(network: nn.Module) -> List[Tuple[int, object]]:
    """Every ``(stage, pair)`` of the network's messages."""
    return [(s, p) for s in network.message_stages for p in network.message_pairs]


def set_message_projections(network: nn.Module, active: Sequence[Tuple[int, object]],
                            generator: torch.Generator) -> None:
    """Zero every message projection, then draw those of ``active`` ``(stage, pair)`` from N(0, 1): messages
    that exist only where a test wants them (untrained ones are exactly zero)."""
    with torch.no_grad():
        for stage, pair in message_slots(network):
            message_projection(network, stage, pair).zero_()
        for stage, pair in active:
            w = message_projection(network, stage, pair)
            w.copy_(torch.randn(w.shape, generator=generator))


# Synthetic challenge cases (BraTS 2020 layout, HECKTOR 2022 CT/PET geometry)

MODS_2020 = ("t1", "t1ce", "t2", "flair")


def make_brats_case(root: Path, case_id: str, seed: int, label: bool = True) -> Path:
    """A BraTS 2020 case folder of 6x7x8 voxels: four random sequences and, with ``label``, a segmentation
    holding labels 1, 2 and 4."""
    rng = np.random.default_rng(seed)
    folder = root / case_id
    folder.mkdir(parents=True)
    for mod in MODS_2020:
        write_image(folder / f"{case_id}_{mod}.nii.gz", rng.integers(0, 500, (6, 7, 8)).astype(np.int16))
    if label:
        seg = np.zeros((6, 7, 8), np.uint8)
        seg[2:4, 2:5, 3:6] = 2
        seg[3, 3, 4] = 4
        seg[2, 2, 3] = 1
        write_image(folder / f"{case_id}_seg.nii.gz", seg)
    return folder


def brats_labels(offset: int = 0) -> np.ndarray:
    """A BraTS 2020 label map (10, 12, 14): nested boxes of labels 2, 1 and 4, shifted by ``offset`` along x."""
    seg = np.zeros((10, 12, 14), np.uint8)
    seg[2:8, 3:9, 3 + offset:11 + offset] = 2
    seg[3:7, 4:8, 4 + offset:9 + offset] = 1
    seg[4:6, 5:7, 5 + offset:7 + offset] = 4
    return seg


# CT and PET with different spacings, origins and fields of view (they overlap partly along every axis)
CT_SIZE, CT_SPACING, CT_ORIGIN = (40, 36, 24), (1.0, 1.25, 2.0), (-20.0, -22.5, -24.0)
PET_SIZE, PET_SPACING, PET_ORIGIN = (12, 14, 10), (4.0, 3.5, 3.0), (-30.0, -18.0, -10.0)
IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
GTVP_INDEX, GTVN_INDEX = (20, 18, 12), (10, 24, 16)  # CT voxels; physical (0, 0, 0) and (-10, 7.5, 8) mm
OUTSIDE_INDEX = (30, 10, 1)  # a CT voxel at z = -22 mm, below the PET's field of view


def hecktor_image(array_zyx, spacing, origin) -> sitk.Image:
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(IDENTITY)
    return img


def ct_point(index) -> np.ndarray:
    return np.asarray(CT_ORIGIN) + np.asarray(index) * np.asarray(CT_SPACING)


def _box(array_zyx, index, radius, value) -> None:
    x, y, z = index
    array_zyx[z - radius[2]:z + radius[2] + 1, y - radius[1]:y + radius[1] + 1, x - radius[0]:x + radius[0] + 1] = value


def make_hecktor_case(images_dir: Path, labels_dir, case_id: str, seed: int, outside_voxel: bool = False) -> None:
    """A HECKTOR 2022 case: CT with a bright GTVp, PET with a hot spot on the GTVn, labels on the CT grid
    (``outside_voxel``: one GTVn voxel outside the PET's field of view)."""
    rng = np.random.default_rng(seed)
    ct = rng.integers(-1000, 1000, CT_SIZE[::-1]).astype(np.int16)
    ct[GTVP_INDEX[::-1]] = 3000
    sitk.WriteImage(hecktor_image(ct, CT_SPACING, CT_ORIGIN), str(images_dir / f"{case_id}__CT.nii.gz"))
    # PET: a smooth hot spot (SUV) centred on the GTVn point
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in PET_SIZE], indexing="ij"), -1)  # (x, y, z, 3)
    points = np.asarray(PET_ORIGIN) + idx * np.asarray(PET_SPACING)
    d2 = ((points - ct_point(GTVN_INDEX)) ** 2).sum(-1)
    pet = (1.0 + 10.0 * np.exp(-d2 / (2 * 5.0 ** 2))).astype(np.float32).transpose(2, 1, 0)
    sitk.WriteImage(hecktor_image(pet, PET_SPACING, PET_ORIGIN), str(images_dir / f"{case_id}__PT.nii.gz"))
    if labels_dir is not None:
        label = np.zeros(CT_SIZE[::-1], np.uint8)
        _box(label, GTVP_INDEX, (3, 3, 2), 1)
        _box(label, GTVN_INDEX, (3, 3, 2), 2)
        if outside_voxel:
            label[OUTSIDE_INDEX[::-1]] = 2
        sitk.WriteImage(hecktor_image(label, CT_SPACING, CT_ORIGIN), str(labels_dir / f"{case_id}.nii.gz"))
