"""The CIML network and its building blocks."""
from nnunetv2_ciml.network.ciml_unet import CIMLUNet, SubtaskDecoders
from nnunetv2_ciml.network.message import ComplementaryMessages

__all__ = ["CIMLUNet", "ComplementaryMessages", "SubtaskDecoders"]
