"""``nnunetv2_ciml evaluate {brats,autopet,hecktor,nnunet} -ref REF_DIR -pred PRED_DIR -o OUT_DIR``.

Thin glue over :func:`nnunetv2_ciml.evaluation.evaluate_folder`; conventions are documented there.
"""
import argparse
import sys

HELP = "Score predictions the way BraTS, autoPET or HECKTOR do (or any nnU-Net dataset): per_case.csv, summary.json."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=["brats", "autopet", "hecktor", "nnunet"],
                        help="brats: Dice/HD95 of WT, TC, ET with the BraTS 2020 empty-case rules (--lesionwise: "
                             "the BraTS 2023+ leaderboards' lesion-wise metrics); autopet: Dice, FPvol, FNvol (mL); "
                             "hecktor: aggregated Dice of GTVp, GTVn; nnunet: Dice/HD95 per "
                             "label or region of a dataset.json")
    parser.add_argument("-ref", required=True, metavar="REF_DIR",
                        help="folder of reference segmentations, one file per case; defines the set of cases")
    parser.add_argument("-pred", required=True, metavar="PRED_DIR",
                        help="folder of predictions named like the references; a missing one counts as empty "
                             "(brats --lesionwise: as the official package counts it, 0 everywhere and HD95 373)")
    parser.add_argument("-o", required=True, metavar="OUT_DIR", help="where per_case.csv and summary.json go")
    parser.add_argument("-np", type=int, default=1, metavar="N", help="worker processes (default 1)")
    parser.add_argument("--labels", choices=["brats2020", "brats2023", "brats2024", "nnunet"], default=None,
                        help="brats only: label convention, brats2020 (1 NCR/NET, 2 edema, 4 ET), brats2023 (ET = "
                             "3), brats2024 (2023 plus 4 resection cavity) or nnunet (1 edema, 2 NCR, 3 ET); "
                             "default: read from the references, refused where their labels cannot tell")
    parser.add_argument("--lesionwise", nargs="?", const="gli", choices=["gli", "mets"], default=None,
                        help="brats only: the BraTS 2023+ leaderboards' lesion-wise Dice, HD95, NSD and lesion "
                             "detection (TP/FP/FN, F1) as the official brats-evaluation package computes them; "
                             "gli (default): regions NETC, SNFH, ET, RC, TC, WT; mets: ET, RC, TC, WT with the "
                             "large/small lesion split")
    parser.add_argument("--variant", choices=["official", "corrected"], default=None,
                        help="with --lesionwise: official (default) reproduces the official package's numbers, "
                             "quirks included; corrected uses each axis' voxel spacing in mm everywhere (the "
                             "official one swaps x and z and takes global HD95/NSD in voxels) and a lesion-wise HD95 "
                             "of 373 instead of infinity for a region without any matched lesion, and scores a "
                             "missing prediction as an empty one (the official rule: 0 everywhere, HD95 373, lesion "
                             "counts 0, empty regions included)")
    parser.add_argument("-dj", metavar="DATASET_JSON", default=None,
                        help="nnunet only (required there): the dataset's dataset.json (labels or regions, "
                             "file_ending)")
    parser.add_argument("-fe", "--file-ending", "--file_ending", dest="file_ending", default=None,
                        help="file ending of the case files (default .nii.gz; nnunet: dataset.json's file_ending)")


def main(args: argparse.Namespace) -> int:
    from nnunetv2_ciml.evaluation import evaluate_folder  # its EvaluationError is reported by nnunetv2_ciml.cli

    options = {}
    if args.labels is not None:
        if args.mode != "brats":
            print("nnunetv2_ciml evaluate: error: --labels applies to the brats mode only", file=sys.stderr)
            return 2
        options["labels"] = args.labels
    for flag, value in (("--lesionwise", args.lesionwise), ("--variant", args.variant)):
        if value is not None and args.mode != "brats":
            print(f"nnunetv2_ciml evaluate: error: {flag} applies to the brats mode only", file=sys.stderr)
            return 2
    if args.variant is not None and args.lesionwise is None:
        print("nnunetv2_ciml evaluate: error: --variant applies to --lesionwise only", file=sys.stderr)
        return 2
    if args.lesionwise is not None:
        options["lesionwise"] = args.lesionwise
        options["variant"] = args.variant or "official"
    if args.mode == "nnunet":
        if args.dj is None:
            print("nnunetv2_ciml evaluate: error: the nnunet mode needs -dj dataset.json", file=sys.stderr)
            return 2
        options["dataset_json"] = args.dj
    elif args.dj is not None:
        print("nnunetv2_ciml evaluate: error: -dj applies to the nnunet mode only", file=sys.stderr)
        return 2
    if args.file_ending is not None:
        options["file_ending"] = args.file_ending
    evaluate_folder(args.mode, args.ref, args.pred, args.o, num_processes=args.np, **options)
    return 0
