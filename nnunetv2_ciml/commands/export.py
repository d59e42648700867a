"""``nnunetv2_ciml export {brats,autopet,hecktor} PRED_DIR OUT_DIR``: nnU-Net predictions into challenge submissions."""
import argparse

HELP = "Turn nnU-Net predictions of a converted BraTS, autoPET or HECKTOR dataset into the challenge's submission files."

_DATASETS = {
    "brats": "BraTS labels (1/2/4, or 1/2/3 with --labels brats2023) as OUT_DIR/CASE.nii.gz, geometry unchanged",
    "autopet": "binary masks OUT_DIR/PATIENT/STUDY/PRED.nii.gz on each study's SUV grid (needs --source)",
    "hecktor": "labels 0/1/2 as OUT_DIR/CASE.nii.gz on each case's original CT grid (needs --source)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, help_text in _DATASETS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("pred_dir", metavar="PRED_DIR", help="folder of nnU-Net predictions (CASE.nii.gz)")
        p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created; must not lie inside PRED_DIR "
                                                          "or the source)")
        p.add_argument("--source", action="append", metavar="RAW_DIR", required=name != "brats", default=None,
                       help="the original challenge folder the cases were converted from (repeat for several)"
                            + (" (optional: checks each prediction's grid and picks the label set)"
                               if name == "brats" else ""))
        if name == "brats":
            p.add_argument("--labels", choices=("auto", "brats2020", "brats2023"), default="auto",
                           help="BraTS label set: brats2020 (1 NCR/NET, 2 edema, 4 ET), brats2023 (1 NETC, 2 SNFH, "
                                "3 ET); auto: from --source naming, else from the case names (BraTS-...: 2023)")
        p.add_argument("-np", dest="num_processes", type=int, default=None,
                       help="worker processes (default: nnU-Net's default, env nnUNet_def_n_proc)")
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def main(args: argparse.Namespace) -> int:
    # errors (ConversionError) are reported by nnunetv2_ciml.cli
    kwargs = dict(num_processes=args.num_processes, overwrite=args.overwrite)
    if args.dataset == "brats":
        from nnunetv2_ciml.dataset_conversion.brats import export_brats
        report = export_brats(args.pred_dir, args.out_dir, labels=args.labels, source=args.source, **kwargs)
    elif args.dataset == "autopet":
        from nnunetv2_ciml.dataset_conversion.autopet import export_autopet
        report = export_autopet(args.pred_dir, args.out_dir, source=args.source, **kwargs)
    else:
        from nnunetv2_ciml.dataset_conversion.hecktor import export_hecktor
        report = export_hecktor(args.pred_dir, args.out_dir, source=args.source, **kwargs)
    print(report.summary())
    return 0
