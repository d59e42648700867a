"""Holds only the trainer shim (nnU-Net imports every module here as a top-level module)."""
