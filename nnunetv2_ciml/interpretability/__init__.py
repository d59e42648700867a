"""Interpretability of CIML models: Grad-CAM maps of what each modality's messages contributed.

See :mod:`nnunetv2_ciml.interpretability.explain` for the method and the Python API
(``nnunetv2_ciml explain`` on the command line).
"""
from nnunetv2_ciml.interpretability.explain import (CaseExplanation, ExplainError, ciml_network, explain_case,
                                                     explain_folder, explain_image, find_cases, load_predictor,
                                                     map_file_name, write_case_explanation)
from nnunetv2_ciml.interpretability.message_gradcam import MessageGradCAM, sliding_window_message_cams

__all__ = ["CaseExplanation", "ExplainError", "MessageGradCAM", "ciml_network", "explain_case", "explain_folder",
           "explain_image", "find_cases", "load_predictor", "map_file_name", "sliding_window_message_cams",
           "write_case_explanation"]
