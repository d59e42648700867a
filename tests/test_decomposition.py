import sys

import pytest

from nnunetv2_ciml.decomposition import DecompositionError, output_names, resolve_decomposition
from helpers import REGIONS, hand_made_trainer

BRATS = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
         "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
         "regions_class_order": [1, 2, 3]}
AUTOPET = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "tumor": 1}}
HECKTOR = {"channel_names": {"0": "CT", "1": "PT"}, "labels": {"background": 0, "GTVp": 1, "GTVn": 2}}


def test_brats_defaults_follow_design():
    d, origin = resolve_decomposition(BRATS, 4)
    assert "defaults" in origin
    assert [(s.name, s.primary, s.outputs) for s in d.subtasks] == [("FLAIR", 3, (0,)), ("T1ce", 1, (1, 2))]
    assert d.senders(d.subtasks[0]) == (0, 1, 2)


def test_autopet_defaults_give_pet_the_lesion_and_background():
    d, _ = resolve_decomposition(AUTOPET, 2)
    assert [(s.primary, s.outputs) for s in d.subtasks] == [(1, (0, 1))]


def test_hecktor_background_goes_to_the_largest_class():
    d, _ = resolve_decomposition(HECKTOR, 2, label_voxel_counts=lambda: {0: 1000, 1: 10, 2: 50})
    owners = {d.output_names[k]: d.modalities[s.primary] for s in d.subtasks for k in s.outputs}
    assert owners == {"background": "PT", "GTVp": "CT", "GTVn": "PT"}
    d, _ = resolve_decomposition(HECKTOR, 2, label_voxel_counts=lambda: {0: 1000, 1: 50, 2: 10})
    owners = {d.output_names[k]: d.modalities[s.primary] for s in d.subtasks for k in s.outputs}
    assert owners["background"] == "CT"


@pytest.mark.parametrize("channels, expected", [
    (("T1", "T1Gd", "T2", "T2-FLAIR"), {"whole tumor": "T2-FLAIR", "tumor core": "T1Gd", "enhancing tumor": "T1Gd"}),
    (("t1n", "t1c", "t2w", "t2f"), {"whole tumor": "t2f", "tumor core": "t1c", "enhancing tumor": "t1c"}),
    (("T2 FLAIR", "T1c", "T1", "T2"), {"whole tumor": "T2 FLAIR", "tumor core": "T1c", "enhancing tumor": "T1c"}),
    (("t2_flair", "T1-post", "T2", "T1"), {"whole tumor": "t2_flair", "tumor core": "T1-post",
                                           "enhancing tumor": "T1-post"}),
])
def test_brats_modality_aliases_get_their_outputs(channels, expected):
    """BraTS modality names as datasets spell them (2023+ short names, T1Gd, T2-FLAIR, in any channel order).
    Fails if an alias is missing: the fallback then makes channel 0 the only primary."""
    dj = dict(BRATS, channel_names={str(c): name for c, name in enumerate(channels)})
    d, origin = resolve_decomposition(dj, 4)
    assert "defaults" in origin
    owners = {d.output_names[k]: d.modalities[s.primary] for s in d.subtasks for k in s.outputs}
    assert owners == expected


@pytest.mark.parametrize("pet_name", ["SUV", "PT", "pet", "FDG"])
def test_pet_aliases_own_the_lesions(pet_name):
    """autoPET/HECKTOR PET channel names (autoPET's SUV, HECKTOR's PT): PET owns the lesion and GTVn, CT the GTVp."""
    d, origin = resolve_decomposition(dict(AUTOPET, channel_names={"0": "CTres", "1": pet_name}), 2)
    assert "defaults" in origin and [(s.primary, s.outputs) for s in d.subtasks] == [(1, (0, 1))]
    d, _ = resolve_decomposition(dict(HECKTOR, channel_names={"0": "CT", "1": pet_name}), 2,
                                 label_voxel_counts=lambda: {0: 100, 1: 20, 2: 10})
    owners = {d.output_names[k]: d.modalities[s.primary] for s in d.subtasks for k in s.outputs}
    assert owners == {"background": "CT", "GTVp": "CT", "GTVn": pet_name}


def test_explicit_block_case_insensitive_with_background():
    dj = dict(HECKTOR, ciml={"subtasks": {"primary tumour": {"primary": "ct", "outputs": ["gtvp", "Background"]},
                                          "nodes": {"primary": "PT", "outputs": ["GTVn"]}}})
    d, origin = resolve_decomposition(dj, 2)
    assert "block" in origin
    assert [(s.name, s.primary, s.outputs) for s in d.subtasks] == [("primary tumour", 0, (1, 0)), ("nodes", 1, (2,))]
    assert d.to_arch_kwargs()["subtask_outputs"] == [[1, 0], [2]]


def test_unknown_names_fall_back_to_channel_zero():
    dj = {"channel_names": {"0": "seqA", "1": "seqB"}, "labels": {"background": 0, "thing": 1}}
    d, origin = resolve_decomposition(dj, 2)
    assert "fallback" in origin and "ciml" in origin
    assert [(s.primary, s.outputs) for s in d.subtasks] == [(0, (0, 1))]


def test_output_order_matches_nnunet():
    assert output_names(BRATS) == ("whole tumor", "tumor core", "enhancing tumor")
    assert output_names({"labels": {"b": 2, "background": 0, "a": 1, "ignore": 3}}) == ("background", "a", "b")


@pytest.mark.parametrize("block, message", [
    ({"subtasks": {"x": {"primary": "DWI", "outputs": ["whole tumor"]}}}, "unknown primary modality 'DWI'"),
    ({"subtasks": {"x": {"primary": "FLAIR", "outputs": ["edema"]}}}, "unknown output 'edema'"),
    ({"subtasks": {"x": {"primary": "FLAIR", "outputs": ["whole tumor", "tumor core", "enhancing tumor"]},
                   "y": {"primary": "T1ce", "outputs": ["tumor core"]}}}, "owned twice"),
    ({"subtasks": {"x": {"primary": "FLAIR", "outputs": ["whole tumor"]}}}, "owned by no ciml subtask"),
    ({"subtasks": {"x": {"primary": "FLAIR", "outputs": []}}}, "non-empty list"),
    ({"subtasks": {"x": {"primary": "FLAIR"}}}, "needs 'primary' and 'outputs'"),
    ({"subtask": {}}, "the 'ciml' block must be"),
])
def test_block_errors_name_the_problem_and_the_choices(block, message):
    with pytest.raises(DecompositionError, match=message) as e:
        resolve_decomposition(dict(BRATS, ciml=block), 4)
    if "unknown primary" in message:
        assert "['T1', 'T1ce', 'T2', 'FLAIR']" in str(e.value)
    if "unknown output" in message:
        assert "['whole tumor', 'tumor core', 'enhancing tumor']" in str(e.value)


CORE = {"primary": "T1ce", "outputs": ["tumor core", "enhancing tumor"]}


@pytest.mark.parametrize("block, message", [
    ({"subtasks": {"wt": {"primary": "FLAIR", "outputs": ["whole tumor"], "fallback": ["T2"]}, "core": CORE}},
     "ciml subtask 'wt' has an unknown key 'fallback' (did you mean 'fallbacks'?); valid keys: 'primary', 'outputs', "
     "'fallbacks'"),
    ({"subtasks": {"wt": {"primary": "FLAIR", "outputs": ["whole tumor"]}, "core": CORE}, "fallbacks": ["T2"]},
     "the 'ciml' block has an unknown key 'fallbacks'; valid keys: 'subtasks'"),
    ({"subtasks": {"wt": {"primay": "FLAIR", "outputs": ["whole tumor"]}, "core": CORE}},
     "ciml subtask 'wt' has an unknown key 'primay' (did you mean 'primary'?)"),
])
def test_an_unknown_key_of_the_block_is_refused_with_the_valid_ones(block, message):
    """A misspelt key ("fallback") used to be ignored: the defaults applied (FLAIR's fallbacks T2, T1ce, T1) and
    training went on with a decomposition the user did not write. Fails if any level of the block lets an unknown
    key pass."""
    with pytest.raises(DecompositionError) as e:
        resolve_decomposition(dict(BRATS, ciml=block), 4)
    assert str(e.value).startswith(f"dataset.json: {message}")


def test_nnunetv2_train_reports_a_bad_block_in_one_line(nnunet_env, capsys, monkeypatch):
    """The trainer's refusal of a bad block ended nnUNetv2_train with a full traceback. Uncaught, it now ends the
    program with its one line (Python prints that through sys.excepthook), while code that catches it still gets the
    error and other errors keep Python's report."""
    from nnunetv2_ciml.training.trainers import nnUNetTrainerCIML

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    block = {"subtasks": {"x": {"primary": "FLAIR", "outputs": ["whole tumor", "tumor core"], "fallback": ["T2"]}}}
    trainer, _ = hand_made_trainer(nnUNetTrainerCIML, nnunet_env, dict(REGIONS, ciml=block))
    with pytest.raises(DecompositionError, match="unknown key 'fallback'") as e:
        trainer.initialize()
    capsys.readouterr()
    sys.excepthook(e.type, e.value, e.tb)
    assert capsys.readouterr().err == f"DecompositionError: {e.value}\n"
    sys.excepthook(ValueError, ValueError("another error"), None)
    assert capsys.readouterr().err.endswith("ValueError: another error\n")


def test_wrong_channel_count_is_an_error():
    with pytest.raises(DecompositionError, match="one network input channel per modality"):
        resolve_decomposition(BRATS, 5)


def test_count_label_voxels_counts_values_over_an_even_sample_of_files(tmp_path):
    """Voxels per label value, summed over the label files (all of them, or every k-th for ``max_files``);
    other file endings ignored. Fails on counting one file only, or on a sample that is not evenly spaced."""
    import numpy as np

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from helpers import write_labels
    from nnunetv2_ciml.decomposition import count_label_voxels

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 3 + (i == 4), (3, 4, 5)) for i in range(5)]  # only the last file has label 3
    for i, array in enumerate(arrays):
        write_labels(tmp_path / f"case_{i}.nii.gz", array)
    (tmp_path / "notes.txt").write_text("not a label file")

    def expected(indices):
        counts = np.bincount(np.concatenate([arrays[i].ravel() for i in indices]))
        return {v: int(n) for v, n in enumerate(counts) if n}

    reader = SimpleITKIO()  # the reader-writer class nnU-Net's plans name for NIfTI
    assert count_label_voxels(str(tmp_path), ".nii.gz", reader) == expected(range(5))
    assert count_label_voxels(str(tmp_path), ".nii.gz", reader, max_files=2) == expected([0, 3])  # every 3rd file
    assert count_label_voxels(str(tmp_path), ".nii.gz", reader, max_files=3) == expected([0, 2, 4])


@pytest.mark.parametrize("dataset_json, expected", [
    (BRATS, {"FLAIR": ["T2", "T1ce", "T1"], "T1ce": ["T1", "T2", "FLAIR"]}),
    (dict(BRATS, channel_names={"0": "t2f", "1": "t1n", "2": "t1c", "3": "t2w"}),
     {"t2f": ["t2w", "t1c", "t1n"], "t1c": ["t1n", "t2w", "t2f"]}),
    (AUTOPET, {"PET": ["CT"]}),
    (HECKTOR, {"CT": ["PT"], "PT": ["CT"]}),
])
def test_default_fallbacks_follow_what_a_reader_turns_to(dataset_json, expected):
    d, _ = resolve_decomposition(dataset_json, len(dataset_json["channel_names"]))
    assert {s.name: [d.modalities[c] for c in s.fallbacks] for s in d.subtasks} == expected
    assert d.to_arch_kwargs()["subtask_fallbacks"] == [list(s.fallbacks) for s in d.subtasks]
    assert "is missing: " in d.describe()


def test_fallbacks_of_the_block_are_used_as_listed():
    block = {"subtasks": {"wt": {"primary": "flair", "outputs": ["whole tumor"], "fallbacks": ["t1ce"]},
                          "core": {"primary": "T1ce", "outputs": ["tumor core", "enhancing tumor"],
                                   "fallbacks": []}}}
    d, _ = resolve_decomposition(dict(BRATS, ciml=block), 4)
    assert [s.fallbacks for s in d.subtasks] == [(1,), ()]


@pytest.mark.parametrize("fallbacks, message", [
    (["T9"], r"unknown fallback modality 'T9'.*\['T1', 'T1ce', 'T2'\]"),
    (["FLAIR"], r"its primary 'FLAIR' cannot be its own fallback"),
    (["T2", "t2"], r"fallback 'T2' is listed twice"),
    ("T2", r"'fallbacks' must be a list"),
])
def test_fallback_errors_name_the_problem(fallbacks, message):
    block = {"subtasks": {"wt": {"primary": "FLAIR", "outputs": ["whole tumor"], "fallbacks": fallbacks},
                          "core": {"primary": "T1ce", "outputs": ["tumor core", "enhancing tumor"]}}}
    with pytest.raises(DecompositionError, match=message):
        resolve_decomposition(dict(BRATS, ciml=block), 4)
