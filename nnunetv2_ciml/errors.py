"""The package's error base class: what the ``nnunetv2_ciml`` command reports as one message, without a traceback.

Every error that describes bad input or a refused action (a file, a case, a setting and what is wrong
with it) derives from :class:`CIMLError`. Anything else reaching the command line is a bug and is
reported as an internal error (traceback with ``--debug`` or ``NNUNETV2_CIML_DEBUG=1``).

Errors cross process boundaries (worker pools of ``convert``, ``export``, ``evaluate``), so every subclass
must survive a pickle round trip, whatever its constructor takes: :meth:`CIMLError.__reduce__` rebuilds
the error from its message arguments and attributes without calling the subclass's ``__init__``.

Our code inside nnU-Net's commands (a trainer's settings, the ``ciml`` block) cannot catch its errors at the top:
:func:`report_without_traceback` makes such an error, if nothing catches it, end the program with its one line.
"""
import sys

__all__ = ["CIMLError", "report_without_traceback"]


def _rebuild(cls, args: tuple, state: dict) -> "CIMLError":
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class CIMLError(Exception):
    """Bad input, a refused action or a stopped run; the message says what, where and what to do."""

    def __reduce__(self):
        # Exception's own reduce calls cls(*self.args), which fails for subclasses whose constructor takes more
        # than the message (ImageFileError(message, path, case)); rebuild without calling __init__ instead.
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def report_without_traceback(error: BaseException) -> None:
    """Print ``error`` as one line (``DecompositionError: ...``), without a traceback, if it ends the program
    uncaught, as a configuration error of ``nnUNetv2_train`` should; code that catches it is not affected, and any
    other uncaught error keeps Python's report (``sys.excepthook``)."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if value is error:
            print(f"{kind.__name__}: {value}", file=sys.stderr)
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook
