"""The ``nnunetv2_ciml`` command: one entry point, one module per subcommand.

Each module in ``nnunetv2_ciml.commands`` defines ``HELP`` (one line), ``add_arguments(parser)``
and ``main(args) -> int``, and imports torch or nnU-Net only inside ``main`` so that ``--help``
stays fast.

One flag style: an option that ``nnUNetv2_predict``/``nnUNetv2_train`` also have keeps nnU-Net's spelling
(``-i -o -m -f -d -chk -np -device -step_size --disable_tta --save_probabilities``), our own options are
``--kebab-case``. Earlier spellings stay as aliases (``--out``, ``--device``, ``--checkpoint``, ``--file_ending``).

Errors reach the user as one message on stderr, exit status 1: the package's own errors
(:class:`~nnunetv2_ciml.errors.CIMLError`, which name the case, the file and what is wrong) and file-system
errors as they are, anything else as an internal error with its type. ``--debug`` (or the environment
variable ``NNUNETV2_CIML_DEBUG=1``) shows the traceback instead. Ctrl-C exits with status 130.
"""
import argparse
import importlib
import os
import sys
from typing import List, Optional

DEBUG_ENV = "NNUNETV2_CIML_DEBUG"

SUBCOMMANDS = {
    "info": "nnunetv2_ciml.commands.info",
    "evaluate": "nnunetv2_ciml.commands.evaluate",
    "convert": "nnunetv2_ciml.commands.convert",
    "export": "nnunetv2_ciml.commands.export",
    "demo": "nnunetv2_ciml.commands.demo",
    "explain": "nnunetv2_ciml.commands.explain",
    "predict": "nnunetv2_ciml.commands.predict",
    "submission": "nnunetv2_ciml.commands.submission",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunetv2_ciml", description="CIML multimodal segmentation for nnU-Net v2.")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (also: environment variable {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, "dataset", None)  # convert/export DATASET
    return f"nnunetv2_ciml {args.command}" + (f" {sub}" if isinstance(sub, str) else "")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def main(argv: Optional[List[str]] = None) -> int:
    from nnunetv2_ciml.errors import CIMLError

    args = build_parser().parse_args(argv)
    if args.debug or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        return int(args._main(args) or 0)
    name = _command_name(args)
    try:
        return int(args._main(args) or 0)
    except CIMLError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
    except OSError as e:  # disk full, permissions, a folder that vanished: the message names the file
        print(f"{name}: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so, and how to get the traceback for a report
        print(f"{name}: internal error: {type(e).__name__}: {_first_line(e) or '(no message)'}\n"
              f"run again with 'nnunetv2_ciml --debug {args.command} ...' for the traceback, and please report it",
              file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
