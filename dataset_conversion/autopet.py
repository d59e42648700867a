"""autoPET (FDG-PET-CT-Lesions, NIfTI release) into nnU-Net, and predictions back to each study's SUV grid.

Source layout: ``PATIENT/STUDY/{CTres,SUV,SEG}.nii.gz`` anywhere below the source folders (``CT.nii.gz``
and ``PET.nii.gz`` are not used: ``CTres`` is the CT already resampled onto the PET grid). One case
per study, identifier ``PATIENT_STUDY`` with every run of characters other than letters, digits,
``_ . -`` replaced by ``-`` (study folders contain spaces). CTres, SUV and SEG must share one grid
(else an error names the file); files are copied byte for byte. Cases of one patient share a
cross-validation fold (``splits_final.json``).

nnU-Net dataset: channel 0 ``CT`` (nnU-Net's CT normalisation: clip to the dataset's foreground
0.5-99.5 percentiles, z-score with the dataset's foreground mean/std), channel 1 ``PET``, the SUV,
which nnU-Net z-scores per image. Choice: nnU-Net's own Dataset221 names both channels "CT" to give
the SUV the dataset-wide CT scheme too, but CIML needs distinct channel names (the decomposition names
its primary modality). To get CT normalisation for the SUV anyway, run ``nnUNetv2_plan_experiment``,
set ``normalization_schemes`` of the configuration in ``nnUNetPlans.json`` to
``["CTNormalization", "CTNormalization"]``, then run ``nnUNetv2_preprocess`` (the fingerprint holds the
intensity statistics of both channels). Labels: background 0, lesion 1.
CIML default: PET owns lesion and the background logit; CT only sends messages.

Export: predictions -> ``OUT/PATIENT/STUDY/PRED.nii.gz``, a binary uint8 mask on that study's SUV grid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import SimpleITK as sitk

from nnunetv2_ciml.image_io import check_label_values

from .common import (FILE_ENDING, CaseCandidate, ConversionError, ConversionReport, DatasetSpec, ExportReport,
                     SourceCase, check_same_grid, check_sources, convert_dataset, copy_image,
                     export_predictions, image_file, read_image, rglob_files,
                     sanitize_identifier)
from .grid import header_grid, resample_to_grid

IMAGE_FILES = ("CTres.nii.gz", "SUV.nii.gz")
LABEL_FILE = "SEG.nii.gz"
_STUDY_MARKERS = IMAGE_FILES + (LABEL_FILE, "CT.nii.gz", "PET.nii.gz")
PREDICTION_FILE = "PRED.nii.gz"

SPEC = DatasetSpec(
    channel_names={0: "CT", 1: "PET"},
    labels={"background": 0, "lesion": 1},
    ciml={"subtasks": {"lesion": {"primary": "PET", "outputs": ["background", "lesion"]}}},
    description="autoPET FDG-PET/CT whole-body lesion segmentation; channel 1 is the SUV",
    reference="https://autopet.grand-challenge.org/",
    license="see the TCIA FDG-PET-CT-Lesions data terms (CC BY 4.0)",
)


def discover(sources: Sequence[Path]) -> List[CaseCandidate]:
    """One candidate per study folder (a folder holding any of CTres/SUV/SEG/CT/PET .nii.gz)."""
    studies = sorted({p.parent for name in _STUDY_MARKERS for p in rglob_files(sources, name)})
    candidates = []
    for study in studies:
        patient = study.parent.name
        images = [study / n if (study / n).is_file() else None for n in IMAGE_FILES]
        candidates.append(CaseCandidate(
            case_id=study_case_id(study), patient=patient, group=study.parent.parent, images=images,
            image_descriptions=[f"'{study / n}'" for n in IMAGE_FILES],
            label=study / LABEL_FILE if (study / LABEL_FILE).is_file() else None,
            label_description=f"label file '{study / LABEL_FILE}'"))
    return candidates


def study_case_id(study: Path) -> str:
    return sanitize_identifier(f"{study.parent.name}_{study.name}")


def convert_case(case: SourceCase, out: Path) -> List[str]:
    """Copy CTres and SUV as channels 0 and 1 and SEG as the label, after checking grids and label values."""
    files = list(case.images) + ([case.label] if case.label is not None else [])
    images = [read_image(p, case.case_id) for p in files]
    check_same_grid(case.case_id, files, images)
    sub = "imagesTr" if case.label is not None else "imagesTs"
    for c in range(len(IMAGE_FILES)):
        copy_image(files[c], images[c], image_file(out / sub, case.case_id, c))
    if case.label is not None:
        check_label_values(sitk.GetArrayViewFromImage(images[-1]), (0, 1), case.case_id, case.label,
                           meaning="0 background, 1 lesion", error=ConversionError)
        copy_image(case.label, images[-1], out / "labelsTr" / f"{case.case_id}{FILE_ENDING}")
    return []


def convert_autopet(sources: Sequence[Path], dataset_id: int, name: Optional[str] = None,
                    num_processes: Optional[int] = None, overwrite: bool = False,
                    skip_incomplete: bool = False) -> ConversionReport:
    """Convert FDG-PET-CT-Lesions folders into ``$nnUNet_raw/DatasetXXX_NAME`` (NAME defaults to autoPET)."""
    return convert_dataset("autoPET", [Path(s) for s in sources], discover, convert_case, SPEC, dataset_id,
                           name or "autoPET", num_processes, overwrite, skip_incomplete)


# ----------------------------------------------------------------------------------------------- export


def _export_case(job: tuple, dst: Path) -> List[str]:
    case_id, pred_file, suv_grid = job
    pred = read_image(pred_file, case_id, "prediction")
    check_label_values(sitk.GetArrayViewFromImage(pred), (0, 1), case_id, pred_file, meaning="0 background, 1 lesion",
                       error=ConversionError)
    mask = resample_to_grid(sitk.Cast(pred, sitk.sitkUInt8), suv_grid, sitk.sitkNearestNeighbor, 0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(mask, str(dst), True)
    return []


def export_autopet(pred_dir: Path, out_dir: Path, source: Sequence[Path], num_processes: Optional[int] = None,
                   overwrite: bool = False) -> ExportReport:
    """Predictions ``CASE.nii.gz`` -> ``out_dir/PATIENT/STUDY/PRED.nii.gz`` on the SUV grid of the study in ``source``."""
    if not source:
        raise ConversionError("autoPET export needs --source: the FDG-PET-CT-Lesions folder the cases came from")
    sources = check_sources(source)
    studies: Dict[str, Path] = {}
    for c in discover(sources):
        if c.images[1] is not None:
            studies[c.case_id] = c.images[1].parent

    def plan(case_id: str, pred_file: Path) -> Tuple[Path, tuple]:
        study = studies.get(case_id)
        if study is None:
            raise ConversionError(f"prediction '{pred_file}': no study with case identifier '{case_id}' (and a "
                                  f"SUV.nii.gz) under {', '.join(map(str, sources))}")
        dst = Path(out_dir) / study.parent.name / study.name / PREDICTION_FILE
        return dst, (case_id, pred_file, header_grid(study / "SUV.nii.gz"))

    report = export_predictions("autoPET", Path(pred_dir), Path(out_dir), plan, _export_case, sources,
                                num_processes, overwrite)
    predicted = {p.parent.parent.name + "/" + p.parent.name for p in report.written}
    missing = sorted(cid for cid, s in studies.items() if f"{s.parent.name}/{s.name}" not in predicted)
    if missing:
        report.warnings.append(f"{len(missing)} studies of the source have no prediction (first: {missing[0]})")
    return report


__all__ = ["convert_autopet", "export_autopet", "discover", "convert_case", "study_case_id", "SPEC"]
