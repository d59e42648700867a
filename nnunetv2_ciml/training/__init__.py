"""nnU-Net trainers for CIML (found by ``nnUNetv2_train -tr`` through ``nnunetv2_ciml.registration``)."""
