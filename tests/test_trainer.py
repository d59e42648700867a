"""The trainer's plans rewrite, on an in-memory plans dict (no training)."""
import pytest
import torch

from nnunetv2_ciml.planning import CIML_NETWORK
from nnunetv2_ciml.training.trainers import nnUNetTrainerCIML, nnUNetTrainerCIML_noMessages
from test_network import REGIONS, plain_architecture


class nnUNetTrainerCIML_halfWidth(nnUNetTrainerCIML):
    branch_width_factor = 0.5


def make_trainer(cls, nnunet_env, dataset_json=REGIONS):
    plans = {"dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans", "continue_training": False,
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "label_manager": "LabelManager", "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
             "configurations": {"3d_fullres": {"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor",
                                               "batch_size": 2, "patch_size": [16, 16, 16], "spacing": [1, 1, 1],
                                               "architecture": plain_architecture(3, base=16), "batch_dice": False}}}
    return cls(plans, "3d_fullres", 0, dict(dataset_json, file_ending=".nii.gz"), torch.device("cpu")), plans


@pytest.mark.parametrize("cls, widths, messages", [
    (nnUNetTrainerCIML_halfWidth, [8, 16, 32], True),
    (nnUNetTrainerCIML_noMessages, None, False),
])
def test_plans_get_the_ciml_architecture(nnunet_env, cls, widths, messages):
    trainer, plans = make_trainer(cls, nnunet_env)
    trainer._use_ciml_architecture()
    arch = plans["configurations"]["3d_fullres"]["architecture"]  # what on_train_start saves as plans.json
    assert arch["network_class_name"] == CIML_NETWORK
    assert trainer.configuration_manager.network_arch_class_name == CIML_NETWORK
    assert arch["arch_kwargs"]["messages"] is messages
    assert arch["arch_kwargs"]["subtask_primaries"] == [2, 0]
    if widths:
        assert arch["arch_kwargs"]["features_per_stage"] == widths


def test_hand_made_ciml_plans_are_kept(nnunet_env):
    trainer, plans = make_trainer(nnUNetTrainerCIML_halfWidth, nnunet_env)
    trainer._use_ciml_architecture()
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 16]
    again = nnUNetTrainerCIML(dict(plans, continue_training=False), "3d_fullres", 0, trainer.dataset_json,
                              torch.device("cpu"))
    again._use_ciml_architecture()
    assert again.configuration_manager.network_arch_init_kwargs["features_per_stage"] == [4, 8, 16]


def test_decomposition_errors_stop_before_training(nnunet_env):
    bad = dict(REGIONS, ciml={"subtasks": {"x": {"primary": "DWI", "outputs": ["whole tumor", "tumor core"]}}})
    trainer, _ = make_trainer(nnUNetTrainerCIML, nnunet_env, bad)
    with pytest.raises(ValueError, match="unknown primary modality 'DWI'"):
        trainer.initialize()
