"""Task decomposition: which modality owns which output channel.

CIML splits the segmentation task into *subtasks*; each subtask owns some of the network's output
channels and has one *primary* modality whose encoder feeds its decoder. Every other modality sends
it messages. The decomposition is read from a ``"ciml"`` block in ``dataset.json``::

    "ciml": {
        "subtasks": {
            "whole tumor": {"primary": "FLAIR", "outputs": ["whole tumor"], "fallbacks": ["T2", "T1ce", "T1"]},
            "tumor core":  {"primary": "T1ce",  "outputs": ["tumor core", "enhancing tumor"]}
        }
    }

``primary`` is a value of ``channel_names``; ``outputs`` are keys of ``labels`` (label names for
softmax training, region names for region training). For softmax training, ``"background"`` may
be listed in one subtask's outputs; if it is not, it goes to the subtask owning the foreground label
with the most voxels in the training labels (or, without counts, to the first subtask).
``fallbacks`` (optional) lists, in order, the modalities whose branch takes the primary's place when the
primary is missing (``nnunetv2_ciml predict``, modality dropout); without it, every other modality, ordered
by :func:`default_fallbacks`. Names are matched case-insensitively.

Without a block, :func:`default_subtasks` assigns outputs by name (FLAIR owns whole
tumor/edema, T1ce owns tumor core, enhancing tumor and necrosis, PET owns lesions and GTVn, CT owns
GTVp). If any foreground output cannot be assigned that way, the fallback is one subtask owning every
output with channel 0 as its primary (every other channel then only sends messages).
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from nnunetv2_ciml.errors import CIMLError

BACKGROUND = "background"
BLOCK_KEYS = ("subtasks",)
SUBTASK_KEYS = ("primary", "outputs", "fallbacks")


class DecompositionError(CIMLError, ValueError):
    """The ``ciml`` block (or the dataset) does not describe a valid decomposition."""


@dataclass(frozen=True)
class Subtask:
    """One subtask: a name, its primary input channel, the output channels it owns, and the channels that take
    the primary's place, in order, when it is missing."""

    name: str
    primary: int
    outputs: Tuple[int, ...]
    fallbacks: Tuple[int, ...] = ()


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
            "subtask_fallbacks": [list(s.fallbacks) for s in self.subtasks],
        }

    def describe(self) -> str:
        lines = ["CIML decomposition:"]
        for s in self.subtasks:
            outs = ", ".join(self.output_names[k] for k in s.outputs)
            send = ", ".join(self.modalities[c] for c in self.senders(s)) or "none"
            order = " -> ".join(self.modalities[c] for c in s.fallbacks) or "none"
            lines.append(f"  subtask '{s.name}': primary {self.modalities[s.primary]} (channel {s.primary}) "
                         f"-> outputs [{outs}]; messages from [{send}]; if {self.modalities[s.primary]} is missing: "
                         f"{order}")
        return "\n".join(lines)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-+]", "", str(name)).casefold()


def named_heads(labels: Mapping, regions_class_order=None, error: type = DecompositionError
                ) -> Tuple[object, Dict[str, Union[int, Tuple[int, ...]]]]:
    """nnU-Net's ``LabelManager`` of dataset.json's ``labels`` and the network's output heads by name, in head
    order: every label value for softmax training, the foreground regions for region training. An invalid
    ``labels`` raises ``error``."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    def key(value) -> Tuple[int, ...]:
        return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)

    try:
        manager = LabelManager(labels, regions_class_order)
    except (AssertionError, RuntimeError, TypeError, ValueError) as e:
        raise error(f"dataset.json 'labels' is invalid for nnU-Net: {e}") from None
    heads = manager.foreground_regions if manager.has_regions else manager.all_labels
    name_of = {key(value): name for name, value in labels.items() if name != "ignore"}
    return manager, {name_of[key(h)]: (key(h) if isinstance(h, (list, tuple)) else int(h)) for h in heads}


def output_names(dataset_json: Mapping) -> Tuple[str, ...]:
    """Names of the network's output channels (:func:`named_heads`)."""
    return tuple(named_heads(dataset_json["labels"], dataset_json.get("regions_class_order"))[1])


def modality_names(dataset_json: Mapping) -> Tuple[str, ...]:
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not names:
        raise DecompositionError("dataset.json has no 'channel_names'")
    return tuple(names[k] for k in sorted(names, key=int))


# (pattern on normalised output names, modality kind) in priority order; see module docstring.
_MODALITY_KINDS = {
    "flair": {"flair", "t2flair", "t2f", "fla"},
    "t1ce": {"t1ce", "t1c", "t1gd", "t1post", "t1contrast", "t1wce"},
    "t1": {"t1", "t1n", "t1w", "t1native", "t1pre"},
    "t2": {"t2", "t2w"},
    "pet": {"pet", "pt", "suv", "fdg", "psma"},
    "ct": {"ct", "ctres"},
}
# What a reader turns to when the primary is missing: FLAIR's oedema shows on T2, T1ce's tumour core on T1
# (without contrast); PET's lesions and CT's anatomy are read from the other.
_FALLBACK_KINDS = {"flair": ("t2", "t1ce", "t1"), "t1ce": ("t1", "t2", "flair"), "pet": ("ct",), "ct": ("pet",)}
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


def default_fallbacks(modalities: Sequence[str], primary: int) -> Tuple[int, ...]:
    """Every channel but ``primary``: first those a reader turns to for the primary's kind (FLAIR -> T2, T1ce,
    T1; T1ce -> T1, T2, FLAIR; PET -> CT; CT -> PET), then the rest in channel order."""
    kinds = [_modality_kind(m) for m in modalities]
    order = [c for kind in _FALLBACK_KINDS.get(kinds[primary], ()) for c, k in enumerate(kinds)
             if k == kind and c != primary]
    order = list(dict.fromkeys(order))
    return tuple(order + [c for c in range(len(modalities)) if c != primary and c not in order])


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
        _check_keys(block, BLOCK_KEYS, "the 'ciml' block", source)
        subtasks_spec, origin = block["subtasks"], "'ciml' block of dataset.json"

    mod_index = {_norm(m): i for i, m in enumerate(mods)}
    out_index = {_norm(o): k for k, o in enumerate(outs)}
    owner: Dict[int, str] = {}
    subtasks: List[Subtask] = []
    for name, spec in subtasks_spec.items():
        if isinstance(spec, Mapping):
            _check_keys(spec, SUBTASK_KEYS, f"ciml subtask '{name}'", source)
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
        subtasks.append(Subtask(str(name), primary, tuple(idx),
                                _fallbacks(spec, name, primary, mods, mod_index, source)))

    background = out_index.get(BACKGROUND)
    if background is not None and background not in owner:
        bg_owner = 0
        if label_voxel_counts is not None and len(subtasks) > 1:
            counts = label_voxel_counts()
            largest = max((k for k in owner if k != background), key=lambda k: counts.get(k, 0))
            bg_owner = next(i for i, s in enumerate(subtasks) if largest in s.outputs)
        s = subtasks[bg_owner]
        subtasks[bg_owner] = Subtask(s.name, s.primary, (background,) + s.outputs, s.fallbacks)
        owner[background] = s.name
    missing = [outs[k] for k in range(len(outs)) if k not in owner]
    if missing:
        raise DecompositionError(f"{source}: outputs {missing} are owned by no ciml subtask; every output of "
                                 f"{list(outs)} needs exactly one owner")
    return Decomposition(mods, outs, tuple(subtasks)), origin


def _check_keys(spec: Mapping, valid: Sequence[str], where: str, source: str) -> None:
    """Refuse a key that is not in ``valid``: a misspelt key would otherwise be ignored and the defaults apply."""
    for key in spec:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            raise DecompositionError(f"{source}: {where} has an unknown key {key!r}"
                                     + (f" (did you mean {close[0]!r}?)" if close else "")
                                     + f"; valid keys: {', '.join(map(repr, valid))}")


def _fallbacks(spec: Mapping, name: str, primary: int, mods: Sequence[str], mod_index: Mapping[str, int],
               source: str) -> Tuple[int, ...]:
    """The subtask's ``fallbacks`` as channels (:func:`default_fallbacks` when absent), validated."""
    if "fallbacks" not in spec:
        return default_fallbacks(mods, primary)
    listed = spec["fallbacks"]
    if isinstance(listed, str) or not isinstance(listed, Sequence):
        raise DecompositionError(f"{source}: ciml subtask '{name}': 'fallbacks' must be a list of modalities from "
                                 f"{list(mods)} (possibly empty); got {listed!r}")
    channels = []
    for f in listed:
        c = mod_index.get(_norm(f))
        if c is None:
            raise DecompositionError(f"{source}: ciml subtask '{name}': unknown fallback modality '{f}'; valid "
                                     f"choices (channel_names): {[m for i, m in enumerate(mods) if i != primary]}")
        if c == primary:
            raise DecompositionError(f"{source}: ciml subtask '{name}': its primary '{mods[primary]}' cannot be its "
                                     f"own fallback; list the modalities that take its place when it is missing")
        if c in channels:
            raise DecompositionError(f"{source}: ciml subtask '{name}': fallback '{mods[c]}' is listed twice")
        channels.append(c)
    return tuple(channels)


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
