"""The ``nnunetv2_ciml`` command: one entry point, one module per subcommand.

Each module in ``nnunetv2_ciml.commands`` defines ``HELP`` (one line), ``add_arguments(parser)``
and ``main(args) -> int``, and imports torch or nnU-Net only inside ``main`` so that ``--help``
stays fast.
"""
import argparse
import importlib
import sys
from typing import List, Optional

SUBCOMMANDS = {
    "info": "nnunetv2_ciml.commands.info",
    "evaluate": "nnunetv2_ciml.commands.evaluate",
    "convert": "nnunetv2_ciml.commands.convert",
    "export": "nnunetv2_ciml.commands.export",
    "demo": "nnunetv2_ciml.commands.demo",
    "explain": "nnunetv2_ciml.commands.explain",
    "predict": "nnunetv2_ciml.commands.predict",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunetv2_ciml", description="CIML multimodal segmentation for nnU-Net v2.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
