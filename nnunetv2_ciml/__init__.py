"""nnunetv2_ciml: CIML multimodal segmentation as an nnU-Net v2 plugin.

Kept import-light on purpose: Python imports ``nnunetv2_ciml.registration`` at every start-up
(through ``nnunetv2_ciml.pth``), so nothing here may pull in torch or nnU-Net.
"""
__version__ = "0.1.0"
