"""The package's error base class: what the ``nnunetv2_ciml`` command reports as one message, without a traceback.

Every error that describes bad input or a refused action (a file, a case, a setting and what is wrong
with it) derives from :class:`CIMLError`. Anything else reaching the command line is a bug and is
reported as an internal error (traceback with ``--debug`` or ``NNUNETV2_CIML_DEBUG=1``).
"""

__all__ = ["CIMLError"]


class CIMLError(Exception):
    """Bad input, a refused action or a stopped run; the message says what, where and what to do."""
