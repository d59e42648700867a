"""The one rule for a fold (``-f``) of every command and Python entry point: an integer or ``all``, as nnU-Net's."""
import argparse
from typing import Union

__all__ = ["parse_fold", "fold_argument"]


def parse_fold(fold: Union[int, str]) -> Union[int, str]:
    """``3`` or ``"3"`` -> 3, ``"all"`` -> ``"all"``; anything else raises ValueError naming the valid forms."""
    text = str(fold).strip()
    if text == "all":
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    raise ValueError(f"fold must be an integer or 'all', not {fold!r}")


def fold_argument(value: str) -> Union[int, str]:
    """:func:`parse_fold` as an argparse ``type``: a bad fold is a usage error with its message."""
    try:
        return parse_fold(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
