"""The ShapeComposition demonstration (``nnunetv2_ciml demo``): synthetic data with a known information structure,
through the real nnU-Net pipeline.

Modules, in the order the demo runs them: :mod:`~nnunetv2_ciml.demo.shape_composition` (the data generator),
:mod:`~nnunetv2_ciml.demo.dataset` (settings, data and plans), :mod:`~nnunetv2_ciml.demo.trainers` (the
budgets), :mod:`~nnunetv2_ciml.demo.nnunet_steps` (nnU-Net's planning and training in subprocesses),
:mod:`~nnunetv2_ciml.demo.predict`, :mod:`~nnunetv2_ciml.demo.evaluate` (with
:mod:`~nnunetv2_ciml.demo.complementary`), :mod:`~nnunetv2_ciml.demo.explain`, :mod:`~nnunetv2_ciml.demo.claims`,
:mod:`~nnunetv2_ciml.demo.figures`, :mod:`~nnunetv2_ciml.demo.report`; :mod:`~nnunetv2_ciml.demo.pipeline` runs
them. Import from the submodules: this package stays import-light.
"""
from nnunetv2_ciml.errors import CIMLError

__all__ = ["DemoError"]


class DemoError(CIMLError, RuntimeError):
    """The demonstration cannot run (output folder, device) or one of its stages failed."""
