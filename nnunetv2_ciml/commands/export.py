"""``nnunetv2_ciml export {brats,autopet,hecktor} PRED_DIR OUT_DIR``: nnU-Net predictions into challenge submissions."""
import argparse
import sys

HELP = "Turn nnU-Net predictions of a converted BraTS, autoPET or HECKTOR dataset into the challenge's submission files."

_DATASETS = {
    "brats": ("BraTS labels (1/2/4, 1/2/3 with --labels brats2023, 1/2/3/4 with brats2024) as OUT_DIR/CASE.nii.gz, "
              "geometry unchanged"),
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
            p.add_argument("--labels", choices=("auto", "brats2020", "brats2023", "brats2024"), default="auto",
                           help="BraTS label set: brats2020 (1 NCR/NET, 2 edema, 4 ET), brats2023 (1 NETC, 2 SNFH, "
                                "3 ET), brats2024 (2023 plus 4 resection cavity: predictions of a dataset converted "
                                "with --labels brats2024); auto: brats2024 if PRED_DIR/dataset.json has a resection "
                                "cavity, else from --source naming, else from the case names (BraTS-...: 2023)")
        if name != "autopet":
            p.add_argument("--zip", metavar="FILE.zip", default=None,
                           help="also write the upload archive: a flat zip of the exported CASE.nii.gz files; refused "
                                "if a case of --source has no prediction")
            p.add_argument("--allow-missing", action="store_true",
                           help="with --zip: archive even if cases of the source have no prediction (or without "
                                "--source)")
        p.add_argument("-np", dest="num_processes", type=int, default=None,
                       help="worker processes (default: nnU-Net's default, env nnUNet_def_n_proc)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace an earlier export in OUT_DIR as a whole (the files its .export.json lists; files "
                            "no export recorded are never replaced) and an existing --zip archive")


def main(args: argparse.Namespace) -> int:
    # errors (ConversionError) are reported by nnunetv2_ciml.cli
    kwargs = dict(num_processes=args.num_processes, overwrite=args.overwrite)
    zip_file = getattr(args, "zip", None)
    if getattr(args, "allow_missing", False) and zip_file is None:
        print(f"nnunetv2_ciml export {args.dataset}: error: --allow-missing applies to --zip only", file=sys.stderr)
        return 2
    if zip_file is not None:  # every check before the first write; the export writes the archive
        from nnunetv2_ciml.dataset_conversion.submission import check_complete, check_zip_target
        check_zip_target(zip_file, args.overwrite)
        missing = check_complete(_source_cases(args.dataset, args.source), args.pred_dir, args.allow_missing)
        kwargs["zip_file"] = zip_file
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
    if zip_file is not None:
        print(f"Archive: {zip_file} ({len(report.written)} cases)")
        if missing:
            listing = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            print(f"warning: {len(missing)} case(s) of the source have no prediction and are not in the archive "
                  f"(the leaderboard scores a missing case with the worst values): {listing}", file=sys.stderr)
    return 0


def _source_cases(dataset: str, source):
    """Case identifiers of the source folders (None without --source)."""
    if not source:
        return None
    from nnunetv2_ciml.dataset_conversion.common import check_sources, resolve_candidates, rglob_files
    sources = check_sources(source)
    if dataset == "brats":
        from nnunetv2_ciml.dataset_conversion.brats import discover
        return [c.case_id for c in resolve_candidates(discover(sources))[0]]
    from nnunetv2_ciml.dataset_conversion.hecktor import CT_SUFFIX
    return [p.name[:-len(CT_SUFFIX)] for p in rglob_files(sources, "*" + CT_SUFFIX)]
