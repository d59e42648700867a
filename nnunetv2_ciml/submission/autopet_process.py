"""The autoPET III algorithm container's entry point: CT and PET in, lesion mask out, via nnU-Net's predictor.

Interface (grand-challenge, as the organisers' baseline container ``ClinicalDataScience/autoPETIII``
``nnunet-baseline/process.py`` reads and writes it):

- input: ``INPUT/images/ct/<name>.mha`` (CT resampled onto the PET grid, HU) and
  ``INPUT/images/pet/<name>.mha`` (PET in SUV), one case per container run;
- output: ``OUTPUT/images/tumor-lesion-segmentation/<uid>.mha`` (the socket of autoPET III's algorithm
  interface, which the FDG/PSMA containers of that edition write; the autoPET II-era baseline wrote
  ``automated-petct-lesion-segmentation``), a binary uint8 mask
  (1 = lesion) on the PET grid, ``<uid>`` the CT file's name without ``.mha`` (as the baseline), and
  ``OUTPUT/data-centric-model.json`` holding ``false`` (the challenge's award-category flag: this is
  not a data-centric entry).

The two folders are paired by name when several files are present; with exactly one file in each
they are paired whatever their names (the baseline does the same). A CT whose grid differs from
the PET's is resampled onto it (linear, -1024 HU outside) before prediction. The model's
``dataset.json`` tells which network channel is CT and which PET (channel names ``CT`` and
``PET``/``SUV``, as ``nnunetv2_ciml convert autopet`` writes them). Every foreground label of the
model counts as lesion. Inputs are read once, through :mod:`nnunetv2_ciml.image_io` (:func:`read_input`), all
of them before the model is loaded: an unreadable or truncated file, or one holding NaN/Inf voxels, stops the run
with an error naming the case and the file, and nothing is written.

Run in the container as ``python -m nnunetv2_ciml.submission.autopet_process`` (defaults: ``/input``,
``/output``, model in ``/opt/algorithm/model``); tests call :func:`process` with other roots.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from nnunetv2_ciml.errors import CIMLError
from nnunetv2_ciml.folds import fold_argument

__all__ = ["OUTPUT_SLUG", "SubmissionError", "pair_inputs", "read_input", "channel_order", "ct_on_pet_grid", "process",
           "main"]

OUTPUT_SLUG = "images/tumor-lesion-segmentation"
CATEGORY_FILE = "data-centric-model.json"
_CT_NAMES, _PET_NAMES = {"ct"}, {"pet", "suv"}


class SubmissionError(CIMLError, RuntimeError):
    """Bad container input or model: the message names the file and what is wrong."""


def pair_inputs(input_root: Path) -> List[Tuple[str, Path, Path]]:
    """``[(uid, ct_file, pet_file)]`` from ``input_root/images/{ct,pet}/*.mha``."""
    folders = {m: input_root / "images" / m for m in ("ct", "pet")}
    files = {}
    for modality, folder in folders.items():
        if not folder.is_dir():
            raise SubmissionError(f"input folder '{folder}' does not exist (expected {modality.upper()} .mha files)")
        files[modality] = sorted(p for p in folder.iterdir() if p.name.endswith(".mha"))
        if not files[modality]:
            raise SubmissionError(f"no .mha file in '{folder}'")
    ct, pet = files["ct"], files["pet"]
    if len(ct) == 1 and len(pet) == 1:
        return [(ct[0].name[:-len(".mha")], ct[0], pet[0])]
    pet_by_name = {p.name: p for p in pet}
    unpaired = [p.name for p in ct if p.name not in pet_by_name] + sorted(set(pet_by_name) - {p.name for p in ct})
    if unpaired:
        raise SubmissionError(f"{len(ct)} CT and {len(pet)} PET files: cannot pair {unpaired[:5]} by name")
    return [(p.name[:-len(".mha")], p, pet_by_name[p.name]) for p in ct]


def read_input(path: Path, uid: str, modality: str) -> sitk.Image:
    """The container input ``path`` (``modality`` "CT" or "PET" of case ``uid``), checked readable, complete and
    finite by :func:`nnunetv2_ciml.image_io.read_image`; a :class:`SubmissionError` naming case and file otherwise."""
    from nnunetv2_ciml.image_io import ImageFileError, read_image

    try:
        return read_image(path, uid, modality)
    except ImageFileError as e:
        raise SubmissionError(str(e)) from None


def channel_order(dataset_json: Dict) -> Tuple[int, int]:
    """Network channel indices ``(ct, pet)`` from the model's channel names."""
    names = {int(k): str(v).strip().lower() for k, v in dataset_json.get("channel_names", {}).items()}
    ct = [k for k, v in names.items() if v in _CT_NAMES]
    pet = [k for k, v in names.items() if v in _PET_NAMES]
    if len(names) != 2 or len(ct) != 1 or len(pet) != 1:
        raise SubmissionError(f"the model's dataset.json channel_names {dataset_json.get('channel_names')} are not "
                              "one CT and one PET (or SUV) channel")
    return ct[0], pet[0]


def ct_on_pet_grid(ct: sitk.Image, pet: sitk.Image) -> sitk.Image:
    from nnunetv2_ciml.image_io import geometry_mismatch

    if geometry_mismatch(ct, pet) is None:  # the package's one "same grid" rule
        ct = sitk.Image(ct)
        ct.CopyInformation(pet)  # equal within tolerance: make nnU-Net's strict geometry check pass
        return ct
    return sitk.Resample(ct, pet, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)


def process(input_root: Union[str, Path], output_root: Union[str, Path], model_folder: Union[str, Path],
            folds: Sequence[Union[int, str]], checkpoint: str = "checkpoint_final.pth", device: Optional[str] = None,
            use_mirroring: bool = False) -> List[Path]:
    """Segment every case of ``input_root`` with the nnU-Net model in ``model_folder``; returns the masks written.

    Args:
        input_root, output_root: the container's ``/input`` and ``/output`` (module docstring).
        model_folder: an nnU-Net training output folder (``plans.json``, ``dataset.json``, ``fold_X/``).
        folds: folds to ensemble, e.g. ``(0,)`` or ``("all",)``.
        checkpoint: checkpoint file name in each fold folder.
        device: ``"cuda"``/``"cpu"``; default cuda if available.
        use_mirroring: test-time mirroring (off by default: the challenge allows minutes per case).
    """
    import torch

    from nnunetv2_ciml.registration import register_ext_trainer_dir

    register_ext_trainer_dir()  # our trainers for nnU-Net's lookup, without relying on the installed .pth
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    input_root, output_root, model_folder = Path(input_root), Path(output_root), Path(model_folder)
    cases = pair_inputs(input_root)
    dataset_json_file = model_folder / "dataset.json"
    if not dataset_json_file.is_file():
        raise SubmissionError(f"'{dataset_json_file}' not found: not an nnU-Net model folder")
    ct_channel, pet_channel = channel_order(json.loads(dataset_json_file.read_text()))
    # every input read (and checked) once, before the model loads and anything is written; the challenge
    # runs the container on one case at a time, so holding them is cheap
    images = [(uid, read_input(ct_file, uid, "CT"), read_input(pet_file, uid, "PET"))
              for uid, ct_file, pet_file in cases]

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                   checkpoint_name=checkpoint)
    reader = predictor.plans_manager.image_reader_writer_class()

    out_dir = output_root / OUTPUT_SLUG
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for uid, ct, pet in images:
            ct = ct_on_pet_grid(ct, pet)
            channels = [None, None]
            channels[ct_channel] = Path(tmp) / f"{uid}_ct.nii.gz"
            channels[pet_channel] = Path(tmp) / f"{uid}_pet.nii.gz"
            sitk.WriteImage(ct, str(channels[ct_channel]))
            sitk.WriteImage(pet, str(channels[pet_channel]))
            data, properties = reader.read_images([str(c) for c in channels])
            seg = predictor.predict_single_npy_array(data, properties)
            mask = sitk.GetImageFromArray((np.asarray(seg) > 0).astype(np.uint8))
            mask.CopyInformation(pet)
            target = out_dir / f"{uid}.mha"
            sitk.WriteImage(mask, str(target), True)
            written.append(target)
    (output_root / CATEGORY_FILE).write_text(json.dumps(False))
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="autoPET III container entry point (CIML via nnU-Net).")
    parser.add_argument("--input", default="/input", help="input root (default /input)")
    parser.add_argument("--output", default="/output", help="output root (default /output)")
    parser.add_argument("--model", default="/opt/algorithm/model", help="nnU-Net model folder")
    parser.add_argument("--folds", nargs="+", type=fold_argument, default=[0], help="folds to ensemble (default 0)")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--tta", action="store_true", help="test-time mirroring")
    args = parser.parse_args(argv)
    try:
        for path in process(args.input, args.output, args.model, args.folds, args.checkpoint, args.device, args.tta):
            print(f"written: {path}")
    except SubmissionError as e:
        print(f"autoPET entry point: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
