"""Shim read by nnU-Net's trainer lookup (``nnUNet_extTrainer``); see ``nnunetv2_ciml.registration``.

nnU-Net imports this file as a top-level module, so it must only re-export, by absolute import.
"""
from nnunetv2_ciml.training.trainers import *  # noqa: F401,F403
from nnunetv2_ciml.training.modality_dropout import *  # noqa: F401,F403
from nnunetv2_ciml.demo.trainers import *  # noqa: F401,F403
from nnunetv2_ciml.benchmarking import *  # noqa: F401,F403
from nnunetv2_ciml.cpu_test_trainers import *  # noqa: F401,F403
