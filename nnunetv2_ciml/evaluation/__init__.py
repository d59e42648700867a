"""Challenge-convention evaluation: BraTS, autoPET, HECKTOR and any nnU-Net dataset.

``evaluate_folder(mode, ref_dir, pred_dir, out_dir, num_processes=1, **mode_options) -> dict`` scores
a folder of predictions (see :mod:`.runner`); the per-case functions work on arrays. Conventions
(empty cases, HD95, penalties, aggregation, resampling) are documented in each mode's module.
"""
from nnunetv2_ciml.evaluation.autopet import autopet_case_metrics
from nnunetv2_ciml.evaluation.base import EvaluationError, EvaluationMode, dice
from nnunetv2_ciml.evaluation.brats import (BRATS_HD95_PENALTY_MM, BRATS_LABEL_CONVENTIONS, brats_region_metrics,
                                            dice_and_hd95)
from nnunetv2_ciml.evaluation.hecktor import hecktor_aggregated_dice, hecktor_case_metrics
from nnunetv2_ciml.evaluation.nnunet_mode import labels_or_regions_from_dataset_json, nnunet_case_metrics
from nnunetv2_ciml.evaluation.runner import MODES, evaluate_case_files, evaluate_folder, make_mode
from nnunetv2_ciml.evaluation.surface_distance import directed_surface_distances, hd95, surface_mask

__all__ = ["evaluate_folder", "evaluate_case_files", "make_mode", "MODES", "EvaluationError", "EvaluationMode",
           "dice", "hd95", "directed_surface_distances", "surface_mask", "dice_and_hd95", "brats_region_metrics",
           "BRATS_HD95_PENALTY_MM", "BRATS_LABEL_CONVENTIONS", "autopet_case_metrics", "hecktor_case_metrics",
           "hecktor_aggregated_dice", "nnunet_case_metrics", "labels_or_regions_from_dataset_json"]
