"""``nnunetv2_ciml explain -m MODEL_FOLDER -f FOLD -i INPUT_DIR -o OUT_DIR [--subtask NAME] [--sender MODALITY]``.

Thin glue over :func:`nnunetv2_ciml.interpretability.explain_folder`; the method and the outputs are
documented in :mod:`nnunetv2_ciml.interpretability.explain`, the output policy (``predict``'s) in
:mod:`nnunetv2_ciml.output_folder`.
"""
import argparse

from nnunetv2_ciml.devices import DEVICE_CHOICES
from nnunetv2_ciml.folds import fold_argument

HELP = ("Grad-CAM maps of what each modality's messages contributed to each subtask of a CIML model: "
        "NIfTI maps in the input's geometry, overlay PNGs, explain.json with each sender's share.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", required=True, metavar="MODEL_FOLDER",
                        help="trained CIML model folder: $nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION")
    parser.add_argument("-f", required=True, type=fold_argument, metavar="FOLD",
                        help="fold to explain (an integer or 'all')")
    parser.add_argument("-i", required=True, metavar="INPUT_DIR",
                        help="cases named as for nnUNetv2_predict: CASE_0000.nii.gz, CASE_0001.nii.gz, ...")
    parser.add_argument("-o", required=True, metavar="OUT_DIR",
                        help="where OUT_DIR/CASE/<sender>_to_<subtask>.nii.gz, the PNGs and explain.json go")
    parser.add_argument("--subtask", action="append", metavar="NAME",
                        help="explain only this receiving subtask (repeatable; default: all)")
    parser.add_argument("--sender", action="append", metavar="MODALITY",
                        help="write maps only for this sending modality (repeatable; default: all). Shares are "
                             "always among all senders of a subtask")
    parser.add_argument("-chk", default="checkpoint_final.pth", metavar="CHECKPOINT",
                        help="checkpoint file in fold_FOLD (default checkpoint_final.pth)")
    parser.add_argument("-device", "--device", dest="device", choices=DEVICE_CHOICES, default="auto",
                        help="default auto: CUDA when torch sees a device, else the CPU")
    parser.add_argument("-step_size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch size (nnU-Net's default 0.5)")
    parser.add_argument("--disable_tta", action="store_true",
                        help="predict without mirroring (the prediction defines what is explained), as "
                             "nnUNetv2_predict --disable_tta")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier explain in an output folder that is not empty (the "
                             "files its explain.json lists; other files stay, and a run that would write over one of "
                             "them stops); without it such a folder is refused")


def main(args: argparse.Namespace) -> int:
    # its ExplainError is reported by nnunetv2_ciml.cli
    from nnunetv2_ciml.interpretability.folder import describe_mean_shares, explain_folder

    summary = explain_folder(args.m, args.f, args.i, args.o, subtasks=args.subtask, senders=args.sender,
                             device=args.device, checkpoint_name=args.chk, tile_step_size=args.step_size,
                             use_mirroring=not args.disable_tta, overwrite=args.overwrite)
    print(f"Explained {len(summary['cases'])} case(s) into {args.o}; mean share of each sender per subtask:")
    for subtask, line in describe_mean_shares(summary).items():
        print(f"  {subtask}: {line}")
    return 0
