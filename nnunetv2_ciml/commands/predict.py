"""``nnunetv2_ciml predict -i IN -o OUT -m MODEL_FOLDER -f 0``: nnU-Net prediction for cases with missing modalities.

nnU-Net's predictor (``nnUNetPredictor``) underneath, case by case; see
:mod:`nnunetv2_ciml.missing_modalities` for how a missing channel is filled and told to the network. A bad case
(unreadable, misnamed or mis-gridded file, an image of the wrong dimension) is reported by name and the others go
on. Output policy (:mod:`nnunetv2_ciml.output_folder`, shared with ``explain`` and ``export``): a folder that is not
empty is refused unless ``--overwrite``; the run writes into ``OUT/.predict.partial`` and its files then replace those
an earlier run recorded in ``modalities.json``, so no earlier prediction outlives the run, a failed case leaves no
segmentation, and files of yours stay; ``modalities.json`` describes every segmentation the runs wrote.
"""
import argparse
import contextlib
import io
import sys
from pathlib import Path
from typing import Dict

from nnunetv2_ciml.devices import DEVICE_CHOICES
from nnunetv2_ciml.folds import fold_argument

HELP = ("Predict with a CIML model when some cases lack modality files (CASE_XXXX missing): nnU-Net's predictor, "
        "the network told which modalities exist; OUT/modalities.json records what each case used.")
STAGING = ".predict.partial"  # where a run writes before its files replace the output folder's
RECORD = "modalities.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", required=True, metavar="INPUT_DIR",
                        help="cases named as for nnUNetv2_predict (CASE_0000.nii.gz, ...); any channel file may be "
                             "absent")
    parser.add_argument("-o", required=True, metavar="OUTPUT_DIR", help="where the segmentations go")
    parser.add_argument("-m", required=True, metavar="MODEL_FOLDER",
                        help="trained model folder: $nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION")
    parser.add_argument("-f", nargs="+", type=fold_argument, default=[0, 1, 2, 3, 4], metavar="FOLD",
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
                        help="replace the predictions of an earlier predict in an output folder that is not empty "
                             "(the files its modalities.json lists; other files stay, and a run that would write over "
                             "one of them stops); without it such a folder is refused")
    parser.add_argument("--zero-fill", action="store_true",
                        help="allow a plain nnU-Net model: missing channels are zeros after normalisation and the "
                             "network is not told (early fusion usually degrades badly)")


def _case_outputs(folder: Path, file_ending: str, case: str) -> list:
    """The files a prediction run writes into ``folder`` for one ``case`` (segmentation, probabilities)."""
    return [folder / name for name in (f"{case}{file_ending}", f"{case}.npz", f"{case}.pkl")
            if (folder / name).is_file()]


def _trained_with_dropout(trainer_name: str) -> bool:
    """Whether nnU-Net's trainer class ``trainer_name`` trains with modality dropout (True when it cannot be found:
    say nothing rather than something wrong)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunetv2_ciml.training.modality_dropout import (nnUNetTrainer_modalityDropout,
                                                         nnUNetTrainerCIML_modalityDropout)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            trainer = recursive_find_trainer_class_by_name(trainer_name)
    except Exception:  # nnU-Net raises whatever its search meets
        return True
    return trainer is None or issubclass(trainer, (nnUNetTrainerCIML_modalityDropout, nnUNetTrainer_modalityDropout))


def _warn_untrained_for_missing(cases: Dict[str, dict], num_modalities: int, trainer_name: str, ciml: bool) -> None:
    """Say once when cases lack modalities that the model was not trained for."""
    incomplete = [case for case, files in cases.items()
                  if 0 < len(set(files) & set(range(num_modalities))) < num_modalities]
    if incomplete and not _trained_with_dropout(trainer_name):
        suggestion = "nnUNetTrainerCIML_modalityDropout" + ("" if ciml else " (or nnUNetTrainer_modalityDropout)")
        print(f"nnunetv2_ciml predict: warning: {len(incomplete)} case(s) lack a modality file (first "
              f"{incomplete[0]!r}), and this model ({trainer_name}) was not trained with modality dropout: it has not "
              f"learnt to segment without a modality, and its results on those cases may be much worse. Train "
              f"{suggestion} for such cases (docs/missing_modalities.md).", file=sys.stderr)


def _predict_cases(predictor, cases: Dict[str, dict], names: list, staging: Path, record: dict,
                   save_probabilities: bool) -> None:
    """Predict ``cases`` into ``staging``, each case's outcome into ``record`` (``cases`` or ``errors``) and onto the
    console; a bad case leaves no file (:class:`CaseError`), a file that cannot be written stops the run
    (:class:`PredictionWriteError`)."""
    from nnunetv2_ciml.missing_modalities import CaseError, image_dimension, missing_summary, predict_case, read_case
    from nnunetv2_ciml.network import unwrap

    reader = predictor.plans_manager.image_reader_writer_class()
    ending, dimension = predictor.dataset_json["file_ending"], image_dimension(predictor.plans_manager)
    primaries = [names[p] for p in unwrap(predictor.network).subtask_primaries] if record["network_told"] else []
    for case, files in cases.items():
        try:
            image, properties, present = read_case(reader, case, files, len(names), names, ending, dimension)
            predict_case(predictor, image, properties, present, str(staging / case), save_probabilities)
        except CaseError as e:
            for written in _case_outputs(staging, ending, case):
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


def main(args: argparse.Namespace) -> int:
    from nnunetv2_ciml.missing_modalities import CaseError, PredictionWriteError, find_case_files, is_ciml
    from nnunetv2_ciml.devices import DeviceError, resolve_device
    from nnunetv2_ciml.output_folder import (OutputFolderError, check_output_folder, recorded_files, refuse_foreign,
                                             replace_outputs, staging_folder)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    def fail(message: str) -> int:
        print(f"nnunetv2_ciml predict: error: {message}", file=sys.stderr)
        return 1

    model = Path(args.m)
    if not (model / "plans.json").is_file():
        return fail(f"{str(model)!r} is not a trained nnU-Net model folder (no plans.json)")
    out = Path(args.o)
    try:
        check_output_folder(out, [args.i], args.overwrite, STAGING)
        device = resolve_device(args.device)
    except (OutputFolderError, DeviceError) as e:
        return fail(str(e))
    folds = list(args.f)
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
    _warn_untrained_for_missing(cases, len(names), predictor.trainer_name, ciml)
    record = {"model_folder": str(model.resolve()), "folds": [str(f) for f in folds], "checkpoint": args.chk,
              "modalities": names, "network_told": ciml, "cases": {}, "errors": {}}
    earlier = recorded_files(out, RECORD)
    try:  # before any case is computed: the run would stop at the end
        refuse_foreign(out, [RECORD, *(f"{case}{predictor.dataset_json['file_ending']}" for case in cases)], earlier,
                       RECORD)
        with staging_folder(out, STAGING) as staging:
            _predict_cases(predictor, cases, names, staging, record, args.save_probabilities)
            replace_outputs(out, staging, RECORD, record, earlier)
    except OutputFolderError as e:
        return fail(str(e))
    except PredictionWriteError as e:  # a full disk: the other cases would fail alike
        return fail(f"{e}; the run stopped and {str(out)!r} was left as it was")
    print(f"Predicted {len(record['cases'])} of {len(cases)} case(s) into {out}; modalities.json lists what each "
          f"used" + (f"; {len(record['errors'])} case(s) failed (see above)" if record["errors"] else ""))
    return 1 if record["errors"] else 0
