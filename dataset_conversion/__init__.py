"""Dataset conversion: BraTS, autoPET and HECKTOR into nnU-Net raw datasets, and predictions back to submissions."""
