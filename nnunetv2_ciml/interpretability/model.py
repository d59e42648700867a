"""The CIML model to explain: loading one fold with nnU-Net's predictor, and naming its message pairs."""
import contextlib
import io
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunetv2_ciml.devices import resolve_device
from nnunetv2_ciml.errors import CIMLError
from nnunetv2_ciml.folds import parse_fold
from nnunetv2_ciml.network import CIMLUNet, MessagePair, unwrap

__all__ = ["ExplainError", "load_predictor", "ciml_network", "select_pairs"]


class ExplainError(CIMLError, ValueError):
    """The model folder, the inputs or the requested subtasks/senders cannot be explained."""


def load_predictor(model_folder: Union[str, Path], fold: Union[int, str] = 0,
                   device: Union[str, torch.device, None] = None, checkpoint_name: str = "checkpoint_final.pth",
                   tile_step_size: float = 0.5, use_mirroring: bool = True,
                   allow_tqdm: Optional[bool] = None) -> nnUNetPredictor:
    """An ``nnUNetPredictor`` initialised from a CIML model folder (one fold), checked to hold a CIML network
    with messages. ``device``: :func:`nnunetv2_ciml.devices.resolve_device` (default auto: CUDA when available,
    else CPU). ``allow_tqdm``: progress bars (nnU-Net's predictor's, the Grad-CAM tiles'); None: only when stderr
    is a terminal, where they draw (elsewhere their escape sequences fill the log)."""
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise ExplainError(f"model folder {str(model_folder)!r} does not exist")
    for name in ("plans.json", "dataset.json"):
        if not (model_folder / name).is_file():
            raise ExplainError(f"{str(model_folder)!r} is not an nnU-Net model folder: it has no {name} "
                               f"(expected $nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION)")
    try:
        fold = str(parse_fold(fold))
    except ValueError as e:
        raise ExplainError(str(e)) from None
    if allow_tqdm is None:
        allow_tqdm = bool(getattr(sys.stderr, "isatty", lambda: False)())
    checkpoint = model_folder / f"fold_{fold}" / checkpoint_name
    if not checkpoint.is_file():
        available = sorted(p.parent.name for p in model_folder.glob(f"fold_*/{checkpoint_name}"))
        others = sorted(p.name for p in (model_folder / f"fold_{fold}").glob("checkpoint_*.pth"))
        hint = f"folds with a {checkpoint_name}: {', '.join(available) or 'none'}"
        if others:
            hint += f"; fold_{fold} holds {', '.join(others)} (choose one with -chk)"
        raise ExplainError(f"missing checkpoint {str(checkpoint)!r} ({hint})")
    device = resolve_device(device)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its device choice and trainer search
            predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True,
                                        use_mirroring=use_mirroring, perform_everything_on_device=device.type == "cuda",
                                        device=device, allow_tqdm=allow_tqdm)
            predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(fold,),
                                                           checkpoint_name=checkpoint_name)
    except Exception as e:
        raise ExplainError(f"cannot load the model in {str(model_folder)!r} (fold {fold}): {e}") from e
    ciml_network(predictor, str(model_folder))
    if predictor.configuration_manager.previous_stage_name is not None:
        raise ExplainError(f"{str(model_folder)!r} is a cascade stage; explain supports single-stage models only")
    return predictor


def ciml_network(predictor: nnUNetPredictor, where: str = "the predictor") -> CIMLUNet:
    """The predictor's CIML network (behind ``torch.compile``/DDP wrappers); ExplainError if it is none."""
    network = unwrap(predictor.network)
    if not isinstance(network, CIMLUNet):
        raise ExplainError(f"{where} holds a {type(network).__name__} (trainer {predictor.trainer_name}), not a "
                           f"CIML network: explain needs a model trained with -tr nnUNetTrainerCIML (or a variant)")
    if not network.message_pairs:
        raise ExplainError(f"{where} is a CIML network without messages (trainer {predictor.trainer_name}): "
                           f"there is no cross-modal contribution to explain")
    return network


def _match(name: str, options: Sequence[str], what: str) -> str:
    for option in options:
        if option.lower() == name.lower():
            return option
    raise ExplainError(f"unknown {what} {name!r}; this model's {what}s are: {', '.join(map(repr, options))}")


def select_pairs(network: CIMLUNet, subtasks: Optional[Sequence[str]],
               senders: Optional[Sequence[str]]) -> Tuple[List[int], List[MessagePair], List[MessagePair]]:
    """The named message pairs to explain: (subtask indices, pairs to compute, pairs to return).

    ``subtasks``/``senders``: names (case-insensitive); None selects all. Every sender of a chosen subtask is
    computed (shares need them all); only the chosen senders are returned."""
    names = network.subtask_names
    chosen = sorted({names.index(_match(s, names, "subtask")) for s in subtasks}) if subtasks else \
        sorted({p.subtask for p in network.message_pairs})
    sender_names = network.modality_names
    sending = {sender_names.index(_match(s, sender_names, "sender modality")) for s in senders} if senders else \
        set(range(len(sender_names)))
    computed = [p for p in network.message_pairs if p.subtask in chosen]
    if not computed:
        raise ExplainError(f"subtask(s) {[names[i] for i in chosen]} receive no messages")
    shown = [p for p in computed if p.sender in sending]
    if not shown:
        valid = sorted({sender_names[p.sender] for p in computed})
        raise ExplainError(f"sender(s) {sorted(sender_names[j] for j in sending)} send no messages to subtask(s) "
                           f"{[names[i] for i in chosen]} (a subtask's primary modality does not message it); "
                           f"their senders are: {', '.join(map(repr, valid))}")
    return chosen, computed, shown
