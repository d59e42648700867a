"""``nnunetv2_ciml convert {brats,autopet,hecktor} SRC [SRC ...] -d ID``: a challenge download into an nnU-Net raw dataset."""
import argparse

HELP = "Convert a BraTS, autoPET or HECKTOR 2022 download into $nnUNet_raw/DatasetXXX_NAME (with a CIML block)."

_DATASETS = {
    "brats": ("BraTS 2020/2021 (CASE_t1/_t1ce/_t2/_flair/_seg) or 2023+ (CASE-t1n/-t1c/-t2w/-t2f/-seg) folders; "
              "region training WT/TC/ET (+ resection cavity with --labels brats2024); default name BraTS2020, "
              "BraTS2023 or BraTS2024"),
    "autopet": "autoPET FDG-PET-CT-Lesions NIfTI folders (PATIENT/STUDY/CTres,SUV,SEG); default name autoPET",
    "hecktor": ("HECKTOR 2022 folders (CASE__CT, CASE__PT, labels CASE.nii.gz); CT and PET resampled onto one grid; "
                "default name HECKTOR2022"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, help_text in _DATASETS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("source", nargs="+", metavar="SRC",
                       help="source folder(s), searched recursively; never written to. A folder whose cases have "
                            "no labels (validation/test set) goes to imagesTs")
        p.add_argument("-d", dest="dataset_id", type=int, required=True, help="nnU-Net dataset ID (1-999)")
        p.add_argument("--name", default=None, help="dataset name (DatasetXXX_NAME)")
        p.add_argument("-np", dest="num_processes", type=int, default=None,
                       help="worker processes (default: nnU-Net's default, env nnUNet_def_n_proc)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing DatasetXXX_NAME")
        p.add_argument("--skip-incomplete", action="store_true",
                       help="skip cases with missing, unreadable or inconsistent files and list them, instead of "
                            "stopping at the first")
        if name == "brats":
            p.add_argument("--labels", choices=("auto", "brats2024"), default="auto",
                           help="auto: BraTS 2020 or 2023 label sets from the file naming; brats2024: post-treatment "
                                "glioma (1 NETC, 2 SNFH, 3 ET, 4 resection cavity), regions WT/TC/ET/RC")
        if name == "hecktor":
            p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                           help="spacing (mm) of the common CT/PET grid; default: each case's CT voxels, cropped to "
                                "the common field of view (CT not interpolated)")


def main(args: argparse.Namespace) -> int:
    # errors (ConversionError) are reported by nnunetv2_ciml.cli
    kwargs = dict(name=args.name, num_processes=args.num_processes, overwrite=args.overwrite,
                  skip_incomplete=args.skip_incomplete)
    if args.dataset == "brats":
        from nnunetv2_ciml.dataset_conversion.brats import convert_brats
        report = convert_brats(args.source, args.dataset_id, labels=args.labels, **kwargs)
    elif args.dataset == "autopet":
        from nnunetv2_ciml.dataset_conversion.autopet import convert_autopet
        report = convert_autopet(args.source, args.dataset_id, **kwargs)
    else:
        from nnunetv2_ciml.dataset_conversion.hecktor import convert_hecktor
        report = convert_hecktor(args.source, args.dataset_id, spacing=args.spacing, **kwargs)
    print(report.summary())
    return 0
