"""Subcommands of the ``nnunetv2_ciml`` command (see ``nnunetv2_ciml.cli``)."""
