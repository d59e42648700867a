"""The CIML network and its building blocks."""
from nnunetv2_ciml.network.ciml_unet import CIMLUNet, SubtaskDecoders
from nnunetv2_ciml.network.message import ComplementaryMessage

__all__ = ["CIMLUNet", "ComplementaryMessage", "SubtaskDecoders"]
