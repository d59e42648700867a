"""Interpretability of CIML models: Grad-CAM maps of what each modality's messages contributed.

- :mod:`~nnunetv2_ciml.interpretability.model`: loading a fold with nnU-Net's predictor, naming its message pairs;
- :mod:`~nnunetv2_ciml.interpretability.message_gradcam`: Grad-CAM on the message tensors, over nnU-Net's tiles;
- :mod:`~nnunetv2_ciml.interpretability.explain`: one case, from its files to maps in the input's geometry;
- :mod:`~nnunetv2_ciml.interpretability.writing`: NIfTI maps, prediction and overlays of one case;
- :mod:`~nnunetv2_ciml.interpretability.folder`: a folder of cases and ``explain.json``
  (``nnunetv2_ciml explain`` on the command line).
"""
from nnunetv2_ciml.interpretability.explain import CaseExplanation, explain_case, explain_image, read_case_files
from nnunetv2_ciml.interpretability.folder import SUMMARY_FILE, explain_folder, find_cases
from nnunetv2_ciml.interpretability.message_gradcam import MessageGradCAM, sliding_window_message_cams
from nnunetv2_ciml.interpretability.model import ExplainError, ciml_network, load_predictor, select_pairs
from nnunetv2_ciml.interpretability.writing import map_file_name, write_case_explanation

__all__ = ["CaseExplanation", "ExplainError", "MessageGradCAM", "SUMMARY_FILE", "ciml_network",
           "explain_case", "explain_folder", "explain_image", "find_cases", "load_predictor", "map_file_name",
           "read_case_files", "select_pairs", "sliding_window_message_cams", "write_case_explanation"]
