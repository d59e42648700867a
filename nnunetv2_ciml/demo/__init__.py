"""The ShapeComposition demonstration: synthetic data with a known information structure.

:mod:`nnunetv2_ciml.demo.shape_composition` writes the dataset (an nnU-Net raw dataset plus, per case,
a mask of where complementary information is needed). Import from the submodules: this package stays
import-light.
"""
