"""``iterations.jsonl``: what a CIML trainer's every training iteration did to the messages and the gradients.

The KL-schedule study (``benchmarks/kl_schedule_study.py``) trains with :class:`IterationLog` mixed in; each
training iteration appends one JSON line to ``fold_X/iterations.jsonl``::

    {"iteration": 41, "epoch": 1, "beta": 0.067, "loss": 1.17, "segmentation_loss": -0.43, "weighted_kl": 1.60,
     "kl": 23.9, "message_kl": [...], "message_gate": [...], "message_magnitude": [...],
     "grad_norm": {"branches": 3.1, "messages": 40.2, "decoders": 2.2, "total": 40.4}}

``message_*`` are per message pair (``message_pairs`` of the first line names them), averaged over the message
stages; ``grad_norm`` holds the L2 norms of the gradients of the modality branches (the encoder), the message
modules, the subtask decoders and of the three together, before nnU-Net clips the total to 12.
"""
import json
from typing import Dict

import torch
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2_ciml.network import unwrap
from nnunetv2_ciml.training.trainers import nnUNetTrainerCIML

__all__ = ["IterationLog", "ITERATION_LOG_NAME"]

ITERATION_LOG_NAME = "iterations.jsonl"


class IterationLog(nnUNetTrainerCIML):
    """Mixin for CIML trainers: one line per training iteration in ``fold_X/iterations.jsonl`` (see module)."""

    def on_train_start(self):
        super().on_train_start()
        network = unwrap(self.network)
        groups = {"branches": network.encoder, "messages": network.messages, "decoders": network.decoder}
        self._squared_grads: Dict[str, torch.Tensor] = {}
        for group, module in groups.items():
            for parameter in module.parameters():
                parameter.register_post_accumulate_grad_hook(self._grad_recorder(group))
        self._log_path = join(self.output_folder, ITERATION_LOG_NAME)
        if self.local_rank == 0 and self.current_epoch == 0:
            with open(self._log_path, "w") as f:
                f.write(json.dumps({"message_pairs": self.message_pair_names()}) + "\n")

    def _grad_recorder(self, group: str):
        def record(parameter: torch.Tensor) -> None:
            # before nnU-Net's clip_grad_norm_, which runs after backward
            square = parameter.grad.detach().float().square().sum()
            self._squared_grads[group] = self._squared_grads.get(group, 0.0) + square
        return record

    def train_step(self, batch: dict) -> dict:
        self._squared_grads = {}
        iteration = self._training_iteration
        result = super().train_step(batch)
        if self.local_rank == 0:
            network = unwrap(self.network)
            terms = {k: float(v) for k, v in self.loss.last_terms.items()}
            norms = {g: float(v) ** 0.5 for g, v in self._squared_grads.items()}
            norms["total"] = sum(v ** 2 for v in norms.values()) ** 0.5
            line = {"iteration": iteration, "epoch": self.current_epoch, "beta": float(self.loss.beta),
                    "loss": float(result["loss"]), "segmentation_loss": terms["segmentation loss"],
                    "weighted_kl": terms.get("beta * KL", 0.0), "kl": float(result["ciml_kl"]),
                    "message_kl": network.message_kl.float().tolist(),
                    "message_gate": network.message_gate.float().tolist(),
                    "message_magnitude": network.message_magnitude.float().tolist(), "grad_norm": norms}
            with open(self._log_path, "a") as f:
                f.write(json.dumps(line) + "\n")
        return result
