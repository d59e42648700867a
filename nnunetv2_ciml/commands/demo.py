"""``nnunetv2_ciml demo [--out DIR] [--device auto|cpu|cuda] [--quick] [--overwrite] [--quiet]``.

Thin glue over :func:`nnunetv2_ciml.demo.pipeline.run_demo`; stages, settings and claims are documented there.
"""
import argparse

from nnunetv2_ciml.devices import DEVICE_CHOICES

HELP = ("Run the ShapeComposition demonstration: data, nnU-Net planning, training of nnU-Net, CIML and "
        "CIML without messages, evaluation, Grad-CAM explanation; writes report.md, results.json, figures.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", dest="out", default="ciml_demo", metavar="DIR",
                        help="output folder (default ./ciml_demo); it also holds the run's nnUNet_raw, "
                             "nnUNet_preprocessed and nnUNet_results: your own nnU-Net folders are not used")
    parser.add_argument("-device", "--device", dest="device", choices=DEVICE_CHOICES, default="auto",
                        help="training and inference device (default auto: CUDA when torch sees a device, else the "
                             "CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="about 1.5 min on a 2-core CPU: tiny data and budget to check that every stage works; "
                             "its numbers say nothing about CIML")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo run in --out (any other non-empty folder is refused)")
    parser.add_argument("--quiet", action="store_true",
                        help="print nothing but errors (the logs in DIR/logs and report.md are written as always)")


def main(args: argparse.Namespace) -> int:
    from nnunetv2_ciml.demo.pipeline import run_demo  # its DemoError/StepError are reported by nnunetv2_ciml.cli

    run_demo(args.out, device=args.device, quick=args.quick, overwrite=args.overwrite, verbose=not args.quiet)
    return 0
