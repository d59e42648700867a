import pytest

from nnunetv2_ciml.decomposition import DecompositionError, output_names, resolve_decomposition

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


def test_wrong_channel_count_is_an_error():
    with pytest.raises(DecompositionError, match="one network input channel per modality"):
        resolve_decomposition(BRATS, 5)
