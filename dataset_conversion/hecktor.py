"""HECKTOR 2022 into nnU-Net (CT and PET on one grid), and predictions back to each case's CT grid.

Source layout, anywhere below the source folders: ``CASE__CT.nii.gz`` and ``CASE__PT.nii.gz`` (CASE is
``CENTER-ID``, e.g. ``CHUM-001``) and the label ``CASE.nii.gz`` in a separate folder (HECKTOR 2022:
``imagesTr/`` and ``labelsTr/``). Labels: 0 background, 1 GTVp, 2 GTVn. A folder of images without
any label (the test set) goes to ``imagesTs``.

CT and PET lie on different grids. Each case is put on one grid, in the CT's orientation, covering the
part of space both modalities image (their common field of view):

- default (``spacing=None``): the CT's own voxels, i.e. the CT grid cropped to the PET's field of view.
  The CT and a label on the CT grid are cropped exactly (no interpolation); only the PET is resampled.
  nnU-Net then resamples every case to its planned target spacing as usual.
- ``spacing=(x, y, z)`` mm: a grid of that spacing centred in the common field of view; CT and PET are
  resampled with B-splines, labels with nearest neighbour.

Interpolated images are clipped to the input's intensity range (no B-spline over/undershoot, e.g. no
negative SUV). Label voxels outside the common field of view are dropped and reported as warnings. A label must lie
on its CT's grid: one on another grid stops the conversion, naming both grids.

nnU-Net dataset: channel 0 ``CT`` (nnU-Net's CT normalisation), channel 1 ``PET`` (per-image z-score);
labels background 0, GTVp 1, GTVn 2. CIML default: CT owns GTVp, PET owns GTVn. The background
logit goes to the GTVp subtask: the primary tumour is the larger target in HECKTOR, and it is the
decomposition's rule for softmax tasks (background to the subtask owning the largest foreground class).

Export: predictions -> ``OUT/CASE.nii.gz`` (uint8, 0/1/2) on the original CT grid of the case, read
from the source folder (``--source``): exact zero-padding back from the default grid, nearest-neighbour
resampling from a custom spacing. This is the HECKTOR 2022 submission format. A prediction with voxels outside its
CT is not on this case's grid (the conversion's grid lies inside the CT) and stops the export.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import SimpleITK as sitk

from nnunetv2_ciml.image_io import check_label_values, geometry_mismatch

from .common import (FILE_ENDING, CaseCandidate, ConversionError, ConversionReport, DatasetSpec, ExportReport,
                     SourceCase, check_sources, convert_dataset, export_predictions, image_file,
                     read_image, rglob_files, write_image)
from .grid import Grid, common_fov_grid, header_grid, resample_to_grid, voxels_outside
from .submission import archive

CT_SUFFIX, PET_SUFFIX = "__CT.nii.gz", "__PT.nii.gz"
LABEL_NAMES = {1: "GTVp", 2: "GTVn"}

SPEC = DatasetSpec(
    channel_names={0: "CT", 1: "PET"},
    labels={"background": 0, "GTVp": 1, "GTVn": 2},
    ciml={"subtasks": {"GTVp": {"primary": "CT", "outputs": ["background", "GTVp"]},
                       "GTVn": {"primary": "PET", "outputs": ["GTVn"]}}},
    description="HECKTOR 2022 head and neck PET/CT, CT and PET on one grid per case (CT orientation, common "
                "field of view)",
    reference="https://hecktor.grand-challenge.org/",
    license="see the HECKTOR 2022 data terms",
)


def discover(sources: Sequence[Path]) -> List[CaseCandidate]:
    """One candidate per CASE with a CT or PET file; labels ``CASE.nii.gz`` found anywhere below the sources."""
    images: Dict[str, Dict[str, Path]] = {}
    for suffix in (CT_SUFFIX, PET_SUFFIX):
        for p in rglob_files(sources, "*" + suffix):
            case_id = p.name[:-len(suffix)]
            if suffix in images.setdefault(case_id, {}):
                raise ConversionError(f"case '{case_id}' was found twice in the source ('{images[case_id][suffix]}' "
                                      f"and '{p}'); case identifiers must be unique")
            images[case_id][suffix] = p
    labels: Dict[str, Path] = {}
    label_folders = set()
    for p in rglob_files(sources, "*" + FILE_ENDING):
        case_id = p.name[:-len(FILE_ENDING)]
        if "__" not in p.name and case_id in images:
            if case_id in labels:
                raise ConversionError(f"case '{case_id}': two label files, '{labels[case_id]}' and '{p}'")
            labels[case_id] = p
            label_folders.add(p.parent)
    candidates = []
    for case_id, files in sorted(images.items()):
        some = files.get(CT_SUFFIX, files.get(PET_SUFFIX))
        candidates.append(CaseCandidate(
            case_id=case_id, patient=case_id, group=some.parent,
            images=[files.get(CT_SUFFIX), files.get(PET_SUFFIX)],
            image_descriptions=[f"'{some.parent / (case_id + s)}'" for s in (CT_SUFFIX, PET_SUFFIX)],
            label=labels.get(case_id), label_description=f"label file '{case_id}{FILE_ENDING}'"))
    # label files without images: name the missing images instead of silently dropping the case
    for folder in sorted(label_folders):
        for p in sorted(folder.glob("*" + FILE_ENDING)):
            case_id = p.name[:-len(FILE_ENDING)]
            if "__" not in p.name and case_id not in images:
                candidates.append(CaseCandidate(
                    case_id=case_id, patient=case_id, group=folder, images=[None, None],
                    image_descriptions=[f"'{case_id}{s}' (label '{p}' has no images)" for s in (CT_SUFFIX, PET_SUFFIX)],
                    label=p, label_description=""))
    return candidates


def convert_case(case: SourceCase, out: Path, spacing: Optional[Tuple[float, float, float]] = None) -> List[str]:
    """Put CT, PET and label of one case on the common-field-of-view grid (see the module docstring)."""
    ct_file, pet_file = case.images
    ct, pet = read_image(ct_file, case.case_id), read_image(pet_file, case.case_id)
    try:
        grid = common_fov_grid(Grid.of(ct), Grid.of(pet), spacing)
    except ValueError as e:
        raise ConversionError(f"case '{case.case_id}': '{ct_file}' and '{pet_file}': {e}") from None
    sub = "imagesTr" if case.label is not None else "imagesTs"
    ct_min = sitk.MinimumMaximumImageFilter()
    ct_min.Execute(ct)
    write_image(resample_to_grid(ct, grid, sitk.sitkBSpline, ct_min.GetMinimum(), clip_to_input_range=True),
                image_file(out / sub, case.case_id, 0))
    write_image(resample_to_grid(pet, grid, sitk.sitkBSpline, 0.0, clip_to_input_range=True),
                image_file(out / sub, case.case_id, 1))
    warnings = []
    if case.label is not None:
        label = read_image(case.label, case.case_id)
        problem = geometry_mismatch(label, ct)
        if problem:  # HECKTOR labels lie on their CT's grid: resampling one would move and resize the tumours
            raise ConversionError(f"case '{case.case_id}': label '{case.label}' is not on the grid of its CT "
                                  f"'{ct_file}' ({problem}): label grid {Grid.of(label).describe()}; CT grid "
                                  f"{Grid.of(ct).describe()}. Resample the label onto its CT's grid first")
        check_label_values(sitk.GetArrayViewFromImage(label), (0, 1, 2), case.case_id, case.label,
                           meaning="0 background, 1 GTVp, 2 GTVn", error=ConversionError)
        label = sitk.Cast(label, sitk.sitkUInt8)
        dropped = voxels_outside(label, grid)
        if dropped:
            lost = ", ".join(f"{n} {LABEL_NAMES[v]}" for v, n in sorted(dropped.items()))
            warnings.append(f"case '{case.case_id}': label voxels outside the common CT/PET field of view were "
                            f"dropped ({lost} voxels of '{case.label}')")
        write_image(resample_to_grid(label, grid, sitk.sitkNearestNeighbor, 0),
                    out / "labelsTr" / f"{case.case_id}{FILE_ENDING}")
    return warnings


def convert_hecktor(sources: Sequence[Path], dataset_id: int, name: Optional[str] = None,
                    num_processes: Optional[int] = None, overwrite: bool = False, skip_incomplete: bool = False,
                    spacing: Optional[Sequence[float]] = None) -> ConversionReport:
    """Convert HECKTOR 2022 folders into ``$nnUNet_raw/DatasetXXX_NAME`` (NAME defaults to HECKTOR2022).

    ``spacing``: (x, y, z) mm of the common grid; None keeps each case's CT voxels (see module docstring).
    """
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ConversionError(f"spacing must be three positive numbers (x, y, z) in mm, got {spacing}")
    return convert_dataset("HECKTOR", [Path(s) for s in sources], discover, partial(convert_case, spacing=spacing),
                           SPEC, dataset_id, name or "HECKTOR2022", num_processes, overwrite, skip_incomplete)


# ----------------------------------------------------------------------------------------------- export


def _export_case(job: tuple, dst: Path) -> List[str]:
    case_id, pred_file, ct_grid = job
    pred = read_image(pred_file, case_id, "prediction")
    check_label_values(sitk.GetArrayViewFromImage(pred), (0, 1, 2), case_id, pred_file,
                       meaning="0 background, 1 GTVp, 2 GTVn", error=ConversionError)
    pred = sitk.Cast(pred, sitk.sitkUInt8)
    dropped = voxels_outside(pred, ct_grid)
    if dropped:  # the conversion's grid lies inside the CT: such a prediction is on another case's or run's grid
        raise ConversionError(f"case '{case_id}': {sum(dropped.values())} predicted voxels of '{pred_file}' lie "
                              f"outside its CT (grid {ct_grid.describe()}; prediction grid "
                              f"{Grid.of(pred).describe()}): the prediction is not on this case's grid")
    dst.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(resample_to_grid(pred, ct_grid, sitk.sitkNearestNeighbor, 0), str(dst), True)
    return []


def export_hecktor(pred_dir: Path, out_dir: Path, source: Sequence[Path], num_processes: Optional[int] = None,
                   overwrite: bool = False, zip_file: Optional[Path] = None) -> ExportReport:
    """Predictions ``CASE.nii.gz`` -> ``out_dir/CASE.nii.gz`` on the grid of ``CASE__CT.nii.gz`` in ``source``, and
    with ``zip_file`` the flat upload archive of them (written before they are moved into place)."""
    if not source:
        raise ConversionError("HECKTOR export needs --source: the HECKTOR folder holding the cases' CASE__CT.nii.gz")
    sources = check_sources(source)
    cts = {p.name[:-len(CT_SUFFIX)]: p for p in rglob_files(sources, "*" + CT_SUFFIX)}

    def plan(case_id: str, pred_file: Path) -> Tuple[Path, tuple]:
        ct = cts.get(case_id)
        if ct is None:
            raise ConversionError(f"prediction '{pred_file}': no '{case_id}{CT_SUFFIX}' under "
                                  f"{', '.join(map(str, sources))}")
        dst = Path(out_dir) / f"{case_id}{FILE_ENDING}"
        return dst, (case_id, pred_file, header_grid(ct))

    report = export_predictions("HECKTOR", Path(pred_dir), Path(out_dir), plan, _export_case, sources,
                                num_processes, overwrite, archive(zip_file, overwrite))
    predicted = {p.name[:-len(FILE_ENDING)] for p in report.written}
    missing = sorted(set(cts) - predicted)
    if missing:
        report.warnings.append(f"{len(missing)} cases of the source have no prediction (first: {missing[0]})")
    return report


__all__ = ["convert_hecktor", "export_hecktor", "discover", "convert_case", "SPEC"]
