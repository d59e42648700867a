"""Task decomposition: which modality owns which output channel.

CIML splits the segmentation task into *subtasks*; each subtask owns some of the network's output
channels and has one *primary* modality whose encoder feeds its decoder. Every other modality sends
it messages. The decomposition is read from a ``"ciml"`` block in ``dataset.json``::

    "ciml": {
        "subtasks": {
            "whole tumor": {"primary": "FLAIR", "outputs": ["whole tumor"]},
            "tumor core":  {"primary": "T1ce",  "outputs": ["tumor core", "enhancing tumor"]}
        }
    }

``primary`` is a value of ``channel_names``; ``outputs`` are keys of ``labels`` (label names for
softmax training, region names for region training). For softmax training, ``"background"`` may
be listed in one subtask's outputs; if it is not, it goes to the subtask owning the foreground label
with the most voxels in the training labels (or, without counts, to the first subtask).
Names are matched case-insensitively.

Without a block, :func:`default_subtasks` assigns outputs by name (FLAIR owns whole
tumor/edema, T1ce owns tumor core, enhancing tumor and necrosis, PET owns lesions and GTVn, CT owns
GTVp). If any foreground output cannot be assigned that way, the fallback is one subtask owning every
output with channel 0 as its primary (every other channel then only sends messages).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from nnunetv2_ciml.errors import CIMLError

BACKGROUND = "background"


class DecompositionError(CIMLError, ValueError):
    """The ``ciml`` block (or the dataset) does not describe a valid decomposition."""


@dataclass(frozen=True)
class Subtask:
    """One subtask: a name, its primary input channel and the output channels it owns."""

    name: str
    primary: int
    outputs: Tuple[int, ...]


@dataclass(frozen=True)
class Decomposition:
    """A resolved decomposition, in channel indices.

    ``modalities[c]`` names input channel ``c``; ``output_names[k]`` names output channel ``k``
    (nnU-Net's order: label values for softmax training, ``labels`` order of the regions for region
    training).
    """

    modalities: Tuple[str, ...]
    output_names: Tuple[str, ...]
    subtasks: Tuple[Subtask, ...]

    def senders(self, subtask: Subtask) -> Tuple[int, ...]:
        """Input channels that send messages to ``subtask``: every channel but its primary."""
        return tuple(c for c in range(len(self.modalities)) if c != subtask.primary)

    def to_arch_kwargs(self) -> dict:
        """The CIML constructor arguments of :class:`nnunetv2_ciml.network.CIMLUNet`."""
        return {
            "modality_names": list(self.modalities),
            "subtask_names": [s.name for s in self.subtasks],
            "subtask_primaries": [s.primary for s in self.subtasks],
            "subtask_outputs": [list(s.outputs) for s in self.subtasks],
        }

    def describe(self) -> str:
        lines = ["CIML decomposition:"]
        for s in self.subtasks:
            outs = ", ".join(self.output_names[k] for k in s.outputs)
            send = ", ".join(self.modalities[c] for c in self.senders(s)) or "none"
            lines.append(f"  subtask '{s.name}': primary {self.modalities[s.primary]} (channel {s.primary}) "
                         f"-> outputs [{outs}]; messages from [{send}]")
        return "\n".join(lines)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-+]", "", str(name)).casefold()


def output_names(dataset_json: Mapping) -> Tuple[str, ...]:
    """Names of the network's output channels: nnU-Net's ``LabelManager`` heads (every label value for
    softmax training, the foreground regions for region training), named by ``labels``."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    def key(value) -> Tuple[int, ...]:
        return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)

    labels: Mapping = dataset_json["labels"]
    try:
        manager = LabelManager(labels, dataset_json.get("regions_class_order"))
    except (AssertionError, TypeError, ValueError) as e:
        raise DecompositionError(f"dataset.json 'labels' is invalid for nnU-Net: {e}") from None
    heads = manager.foreground_regions if manager.has_regions else manager.all_labels
    name_of = {key(value): name for name, value in labels.items() if name != "ignore"}
    return tuple(name_of[key(head)] for head in heads)


def modality_names(dataset_json: Mapping) -> Tuple[str, ...]:
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not names:
        raise DecompositionError("dataset.json has no 'channel_names'")
    return tuple(names[k] for k in sorted(names, key=int))


# (pattern on normalised output names, modality kind) in priority order; see module docstring.
_MODALITY_KINDS = {
    "flair": {"flair", "t2flair", "t2f", "fla"},
    "t1ce": {"t1ce", "t1c", "t1gd", "t1post", "t1contrast", "t1wce"},
    "pet": {"pet", "pt", "suv", "fdg", "psma"},
    "ct": {"ct", "ctres"},
}
_OUTPUT_RULES: Sequence[Tuple[set, str]] = (
    ({"wholetumor", "wt", "whole", "edema", "ed", "snfh", "peritumoraledema"}, "flair"),
    ({"tumorcore", "tc", "core", "enhancingtumor", "et", "enhancing", "ncr", "net", "ncrnet", "netc",
      "necrosis", "necrotic", "nonenhancingtumor", "rc", "resectioncavity"}, "t1ce"),
    ({"gtvp", "primary", "primarytumor"}, "ct"),
    ({"gtvn", "node", "nodes", "lymphnode", "lymphnodes", "lesion", "lesions", "tumor", "tumour"}, "pet"),
)


def _modality_kind(name: str) -> Optional[str]:
    n = _norm(name)
    return next((kind for kind, names in _MODALITY_KINDS.items() if n in names), None)


def default_subtasks(dataset_json: Mapping) -> Tuple[Dict[str, dict], str]:
    """A ``"subtasks"`` mapping (same schema as the ``ciml`` block) from names alone, and why."""
    mods = modality_names(dataset_json)
    outs = [o for o in output_names(dataset_json) if o != BACKGROUND]
    channel_of_kind: Dict[str, str] = {}
    for m in mods:
        kind = _modality_kind(m)
        if kind is not None and kind not in channel_of_kind:
            channel_of_kind[kind] = m
    owner: Dict[str, str] = {}
    for o in outs:
        for names, kind in _OUTPUT_RULES:
            if _norm(o) in names and kind in channel_of_kind:
                owner[o] = channel_of_kind[kind]
                break
    if len(mods) > 1 and outs and len(owner) == len(outs):
        subtasks: Dict[str, dict] = {}
        for o in outs:  # one subtask per primary modality, named after it
            subtasks.setdefault(owner[o], {"primary": owner[o], "outputs": []})["outputs"].append(o)
        return subtasks, "defaults from modality and label names"
    unmatched = [o for o in outs if o not in owner]
    return ({mods[0]: {"primary": mods[0], "outputs": list(outs)}},
            f"fallback: one subtask with primary '{mods[0]}' (channel 0); no name rule for {unmatched or 'a single modality'}; "
            "write a 'ciml' block in dataset.json to choose")


def resolve_decomposition(dataset_json: Mapping, num_input_channels: Optional[int] = None,
                          label_voxel_counts: Optional[Callable[[], Mapping[int, int]]] = None,
                          source: str = "dataset.json") -> Tuple[Decomposition, str]:
    """Resolve the ``ciml`` block (or the defaults) of ``dataset_json`` into channel indices.

    ``label_voxel_counts`` (called only if needed; returns label value -> voxels in the training
    labels) picks the background owner for softmax training when the block does not. Returns the decomposition and a one-line origin.
    Raises :class:`DecompositionError` naming the valid choices on any inconsistency.
    """
    mods = modality_names(dataset_json)
    outs = output_names(dataset_json)
    if num_input_channels is not None and num_input_channels != len(mods):
        raise DecompositionError(
            f"{source}: CIML needs exactly one network input channel per modality, but the network gets "
            f"{num_input_channels} input channels for {len(mods)} channel_names {list(mods)} "
            "(cascaded configurations, which add segmentation channels, are not supported)")
    block = dataset_json.get("ciml")
    if block is None:
        subtasks_spec, origin = default_subtasks(dataset_json)
    else:
        if not isinstance(block, Mapping) or not isinstance(block.get("subtasks"), Mapping) or not block["subtasks"]:
            raise DecompositionError(f"{source}: the 'ciml' block must be {{\"subtasks\": {{NAME: {{\"primary\": "
                                     f"MODALITY, \"outputs\": [OUTPUT, ...]}}, ...}}}}; got {block!r}")
        subtasks_spec, origin = block["subtasks"], "'ciml' block of dataset.json"

    mod_index = {_norm(m): i for i, m in enumerate(mods)}
    out_index = {_norm(o): k for k, o in enumerate(outs)}
    owner: Dict[int, str] = {}
    subtasks: List[Subtask] = []
    for name, spec in subtasks_spec.items():
        if not isinstance(spec, Mapping) or "primary" not in spec or "outputs" not in spec:
            raise DecompositionError(f"{source}: ciml subtask '{name}' needs 'primary' and 'outputs'; got {spec!r}")
        primary = mod_index.get(_norm(spec["primary"]))
        if primary is None:
            raise DecompositionError(f"{source}: ciml subtask '{name}': unknown primary modality "
                                     f"'{spec['primary']}'; valid choices (channel_names): {list(mods)}")
        if isinstance(spec["outputs"], str) or not spec["outputs"]:
            raise DecompositionError(f"{source}: ciml subtask '{name}': 'outputs' must be a non-empty list of "
                                     f"names from {list(outs)}; got {spec['outputs']!r}")
        idx = []
        for o in spec["outputs"]:
            k = out_index.get(_norm(o))
            if k is None:
                raise DecompositionError(f"{source}: ciml subtask '{name}': unknown output '{o}'; valid choices "
                                         f"(labels/regions of dataset.json): {list(outs)}")
            if k in owner:
                raise DecompositionError(f"{source}: output '{outs[k]}' is owned twice, by subtasks "
                                         f"'{owner[k]}' and '{name}'; every output needs exactly one owner")
            owner[k] = str(name)
            idx.append(k)
        subtasks.append(Subtask(str(name), primary, tuple(idx)))

    background = out_index.get(BACKGROUND)
    if background is not None and background not in owner:
        bg_owner = 0
        if label_voxel_counts is not None and len(subtasks) > 1:
            counts = label_voxel_counts()
            largest = max((k for k in owner if k != background), key=lambda k: counts.get(k, 0))
            bg_owner = next(i for i, s in enumerate(subtasks) if largest in s.outputs)
        s = subtasks[bg_owner]
        subtasks[bg_owner] = Subtask(s.name, s.primary, (background,) + s.outputs)
        owner[background] = s.name
    missing = [outs[k] for k in range(len(outs)) if k not in owner]
    if missing:
        raise DecompositionError(f"{source}: outputs {missing} are owned by no ciml subtask; every output of "
                                 f"{list(outs)} needs exactly one owner")
    return Decomposition(mods, outs, tuple(subtasks)), origin


def count_label_voxels(label_folder: str, file_ending: str, reader_writer, max_files: int = 50) -> Dict[int, int]:
    """Voxels per label value over (an evenly spaced sample of at most ``max_files``) label files, read with
    ``reader_writer`` (an instance of the plans' nnU-Net reader-writer class, e.g. ``SimpleITKIO()``)."""
    import numpy as np

    files = sorted(f for f in os.listdir(label_folder) if f.endswith(file_ending))
    files = files[::max(1, -(-len(files) // max_files))]
    counts: Dict[int, int] = {}
    for f in files:
        seg, _ = reader_writer.read_seg(os.path.join(label_folder, f))
        values, n = np.unique(seg, return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[int(v)] = counts.get(int(v), 0) + int(c)
    return counts
