"""``nnunetv2_ciml submission autopet -m MODEL_FOLDER -f FOLDS -o DIR``: a challenge algorithm container folder."""
import argparse
import sys

from nnunetv2_ciml.folds import fold_argument

HELP = "Build the folder of a challenge algorithm container (autoPET III: Dockerfile, package, model, entry point)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="challenge", required=True, metavar="CHALLENGE")
    p = sub.add_parser("autopet", help="autoPET III grand-challenge container: /input/images/{ct,pet}/*.mha -> "
                                       "/output/images/tumor-lesion-segmentation/<uid>.mha",
                       description="autoPET III grand-challenge algorithm container folder (docker build it, "
                                   "docker save it, upload the .tar.gz)")
    p.add_argument("-m", dest="model_folder", required=True, metavar="MODEL_FOLDER",
                   help="nnU-Net training output folder (nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG) of a model "
                        "with one CT and one PET channel (nnunetv2_ciml convert autopet)")
    p.add_argument("-f", dest="folds", nargs="+", required=True, type=fold_argument, metavar="FOLD",
                   help="folds to ensemble, e.g. 0 1 2 3 4")
    p.add_argument("-o", dest="out_dir", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("-chk", "--checkpoint", dest="checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file name in each fold folder")
    p.add_argument("--base-image", default=None, help="Docker base image (default: an official PyTorch CUDA runtime)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")


def main(args: argparse.Namespace) -> int:
    from nnunetv2_ciml.submission.autopet import DEFAULT_BASE_IMAGE, build_autopet_submission
    from nnunetv2_ciml.submission.autopet_process import SubmissionError

    try:
        out = build_autopet_submission(args.model_folder, args.folds, args.out_dir, args.checkpoint,
                                       args.base_image or DEFAULT_BASE_IMAGE, args.overwrite)
    except SubmissionError as e:
        print(f"nnunetv2_ciml submission {args.challenge}: error: {e}", file=sys.stderr)
        return 1
    print(f"Container folder written: {out}\nNext: bash {out / 'build.sh'} (test as in {out / 'README.md'}), "
          f"then bash {out / 'export.sh'} and upload {out / 'autopet_ciml.tar.gz'}")
    return 0
