"""The CIML network and its building blocks."""
from nnunetv2_ciml.network.ciml_unet import CIMLUNet, SubtaskDecoders, modalities_present, unwrap
from nnunetv2_ciml.network.grouped import grouped_conv
from nnunetv2_ciml.network.message import MessagePair, StageMessages, pair_name

__all__ = ["CIMLUNet", "MessagePair", "StageMessages", "SubtaskDecoders", "grouped_conv", "modalities_present",
           "pair_name", "unwrap"]
