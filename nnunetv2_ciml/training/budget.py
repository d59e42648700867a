"""A fixed training budget for nnU-Net trainers (the demonstration's, the benchmarks' and the tests')."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

__all__ = ["TrainingBudget"]


class TrainingBudget(nnUNetTrainer):
    """A fixed budget of ``budget_epochs`` x ``budget_iterations`` training iterations (and
    ``budget_val_iterations`` validation iterations per epoch): variants set the class attributes, which
    nnU-Net's ``__init__`` would otherwise overwrite."""

    budget_epochs: int = 1000
    budget_iterations: int = 250
    budget_val_iterations: int = 50

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.budget_epochs
        self.num_iterations_per_epoch = self.budget_iterations
        self.num_val_iterations_per_epoch = self.budget_val_iterations
