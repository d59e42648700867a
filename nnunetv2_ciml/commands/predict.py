"""``nnunetv2_ciml predict -i IN -o OUT -m MODEL_FOLDER -f 0``: nnU-Net prediction for cases with missing modalities.

nnU-Net's predictor (``nnUNetPredictor``) underneath, case by case; see
:mod:`nnunetv2_ciml.missing_modalities` for how a missing channel is filled and told to the network. A bad case
(unreadable, misnamed or mis-gridded file, an image of the wrong dimension) is reported by name and the others go
on. Output policy, as ``export``'s: a folder that is not empty is refused unless ``--overwrite``; the run writes into
``OUT/.predict.partial`` and its files then replace the folder's predictions, so no earlier file outlives the run
and a failed case leaves no segmentation; ``modalities.json`` describes every segmentation in the folder.
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from nnunetv2_ciml.devices import DEVICE_CHOICES

HELP = ("Predict with a CIML model when some cases lack modality files (CASE_XXXX missing): nnU-Net's predictor, "
        "the network told which modalities exist; OUT/modalities.json records what each case used.")
STAGING = ".predict.partial"  # where a run writes before its files replace the output folder's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", required=True, metavar="INPUT_DIR",
                        help="cases named as for nnUNetv2_predict (CASE_0000.nii.gz, ...); any channel file may be "
                             "absent")
    parser.add_argument("-o", required=True, metavar="OUTPUT_DIR", help="where the segmentations go")
    parser.add_argument("-m", required=True, metavar="MODEL_FOLDER",
                        help="trained model folder: $nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], metavar="FOLD",
                        help="folds to ensemble (as nnUNetv2_predict; default 0 1 2 3 4)")
    parser.add_argument("-chk", default="checkpoint_final.pth", metavar="CHECKPOINT",
                        help="checkpoint file in each fold folder (default checkpoint_final.pth)")
    parser.add_argument("-step_size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch size (default 0.5)")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring at test time")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also write the softmax/sigmoid probabilities (.npz) as nnUNetv2_predict does")
    parser.add_argument("-device", "--device", dest="device", choices=DEVICE_CHOICES, default="auto",
                        help="default auto: CUDA when torch sees a device, else the CPU")
    parser.add_argument("--cases", nargs="+", metavar="CASE",
                        help="predict these cases only (default: every case with at least one file); a listed case "
                             "without any file is reported as an error")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the predictions of an output folder that is not empty (its segmentations, "
                             "probabilities and modalities.json; other files stay); without it such a folder is "
                             "refused")
    parser.add_argument("--zero-fill", action="store_true",
                        help="allow a plain nnU-Net model: missing channels are zeros after normalisation and the "
                             "network is not told (early fusion usually degrades badly)")


def _outputs(folder: Path, file_ending: str, case: str = "") -> list:
    """The files a prediction run writes into ``folder`` (segmentations, probabilities, modalities.json), of one
    ``case`` or all."""
    names = ([f"{case}{file_ending}", f"{case}.npz", f"{case}.pkl"] if case else None)
    return [p for p in folder.iterdir() if p.is_file() and (
        p.name in names if names else p.name == "modalities.json" or p.name.endswith((file_ending, ".npz", ".pkl")))]


def main(args: argparse.Namespace) -> int:
    from nnunetv2_ciml.missing_modalities import (CaseError, find_case_files, image_dimension, is_ciml,
                                                  missing_summary, predict_case, read_case)
    from nnunetv2_ciml.devices import DeviceError, resolve_device
    from nnunetv2_ciml.network import unwrap
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    def fail(message: str) -> int:
        print(f"nnunetv2_ciml predict: error: {message}", file=sys.stderr)
        return 1

    model = Path(args.m)
    if not (model / "plans.json").is_file():
        return fail(f"{str(model)!r} is not a trained nnU-Net model folder (no plans.json)")
    out = Path(args.o)
    if out.resolve() == Path(args.i).resolve():
        return fail(f"the output folder must differ from the input folder {args.i!r}")
    if out.exists() and not out.is_dir():
        return fail(f"the output folder {str(out)!r} is a file")
    earlier = sorted(p.name for p in out.iterdir() if p.name != STAGING) if out.is_dir() else []
    if earlier and not args.overwrite:
        return fail(f"the output folder {str(out)!r} is not empty ({len(earlier)} entries, first {earlier[0]!r}); "
                    f"pass --overwrite to replace the predictions in it, or choose an empty folder")
    try:
        device = resolve_device(args.device)
    except DeviceError as e:
        return fail(str(e))
    folds = [f if f == "all" else int(f) for f in args.f]
    predictor = nnUNetPredictor(tile_step_size=args.step_size, use_gaussian=True, use_mirroring=not args.disable_tta,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    try:
        predictor.initialize_from_trained_model_folder(str(model), use_folds=folds, checkpoint_name=args.chk)
    except (FileNotFoundError, RuntimeError) as e:
        return fail(f"cannot load the model from {str(model)!r} (folds {args.f}, checkpoint {args.chk}): {e}")
    ciml = is_ciml(predictor.network)
    if not ciml and not args.zero_fill:
        return fail(f"{str(model)!r} holds a plain nnU-Net model ({type(predictor.network).__name__}), which cannot "
                    f"be told that a modality is missing; its missing channels would be zeros it reads as data. "
                    f"Pass --zero-fill to predict that way anyway, or use a CIML model (-tr nnUNetTrainerCIML*).")
    channel_names = predictor.dataset_json["channel_names"]
    names = [channel_names[str(c)] for c in range(len(channel_names))]
    try:
        cases = find_case_files(args.i, predictor.dataset_json["file_ending"], len(names), args.cases, names)
    except CaseError as e:
        return fail(str(e))
    reader = predictor.plans_manager.image_reader_writer_class()
    ending, dimension = predictor.dataset_json["file_ending"], image_dimension(predictor.plans_manager)
    primaries = [names[p] for p in unwrap(predictor.network).subtask_primaries] if ciml else []
    record = {"model_folder": str(model.resolve()), "folds": [str(f) for f in folds], "checkpoint": args.chk,
              "modalities": names, "network_told": ciml, "cases": {}, "errors": {}}
    # Every case is written to a staging folder first, and its files replace the output folder's only at the end:
    # an earlier run's file never outlives this run, and a failed case leaves none behind.
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for case, files in cases.items():
        try:
            image, properties, present = read_case(reader, case, files, len(names), names, ending, dimension)
            predict_case(predictor, image, properties, present, str(staging / case), args.save_probabilities)
        except CaseError as e:
            for written in _outputs(staging, ending, case):
                written.unlink()
            record["errors"][case] = str(e)
            print(f"nnunetv2_ciml predict: error: {e}", file=sys.stderr)
            continue
        record["cases"][case] = missing_summary(present, names, predictor.network)
        missing = record["cases"][case]["missing"]
        replaced = [f"{subtask} reads {'+'.join(read) or 'messages only'}"
                    for (subtask, read), primary in zip(record["cases"][case].get("reads", {}).items(), primaries)
                    if read != [primary]]
        print(f"{case}: {'all modalities' if not missing else 'without ' + ', '.join(missing)}"
              + (f" ({'; '.join(replaced)})" if replaced else ""))
    (staging / "modalities.json").write_text(json.dumps(record, indent=2) + "\n")
    for stale in _outputs(out, ending):
        stale.unlink()
    for written in staging.iterdir():
        os.replace(written, out / written.name)
    staging.rmdir()
    print(f"Predicted {len(record['cases'])} of {len(cases)} case(s) into {out}; modalities.json lists what each "
          f"used" + (f"; {len(record['errors'])} case(s) failed (see above)" if record["errors"] else ""))
    return 1 if record["errors"] else 0
