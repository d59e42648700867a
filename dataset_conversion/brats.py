"""BraTS into nnU-Net (region training, as nnU-Net's Dataset137_BraTS21) and predictions back to BraTS labels.

Source layouts, found anywhere below the source folders and detected per case from the file names:

- BraTS 2020/2021: ``CASE_{t1,t1ce,t2,flair}.nii.gz`` and ``CASE_seg.nii.gz``; labels 1 NCR/NET, 2 edema, 4 ET.
- BraTS 2023 and later (GLI, SSA, MET): ``CASE-{t1n,t1c,t2w,t2f}.nii.gz`` and ``CASE-seg.nii.gz``;
  labels 1 NETC, 2 SNFH (edema), 3 ET.
- BraTS 2024+ post-treatment glioma (``labels="brats2024"``, CLI ``--labels brats2024``): the 2023
  naming with labels 1 NETC, 2 SNFH, 3 ET, 4 RC (resection cavity). Without that option a label 4 is
  refused with a message pointing to it (the label set is a property of the dataset, and reading
  every label file up front to guess it would cost minutes on a full download).

``.nii`` files are read as well (and written as ``.nii.gz``). Case folders of a source folder without
any ``seg`` file (validation/test sets) go to ``imagesTs``. Known quirk: BraTS 2020's
``BraTS20_Training_355`` ships its label as ``W39_1998.09.19_Segm.nii``; copy the folder and rename the
file to ``BraTS20_Training_355_seg.nii``, or use ``--skip-incomplete``.

nnU-Net dataset: channels 0 T1, 1 T1ce, 2 T2, 3 FLAIR (images copied byte for byte); labels remapped
with nnU-Net's own function to 1 edema, 2 NCR/NETC, 3 ET; regions whole tumor (1, 2, 3), tumor core
(2, 3), enhancing tumor (3) with ``regions_class_order`` (1, 2, 3). CIML default: FLAIR owns
whole tumor, T1ce owns tumor core and enhancing tumor; T1 and T2 only send messages.

Post-treatment dataset (``brats2024``): the label files keep the BraTS 2024 values (1 NETC, 2 SNFH,
3 ET, 4 RC; a BraTS 2020 case among them has its 4 mapped to 3) and the regions are the ones the
official evaluation scores: whole tumor (1, 2, 3), tumor core (1, 3), enhancing tumor (3) and
resection cavity (4), with ``regions_class_order`` (2, 1, 3, 4), so that nnU-Net's region-to-label
conversion writes BraTS 2024 labels directly (NETC and SNFH are TC minus ET and WT minus TC, scored by
``evaluate brats --lesionwise``). CIML default: FLAIR owns whole tumor, T1ce owns tumor core and
enhancing tumor, T2 owns resection cavity (a fluid-filled cavity is brightest on T2 and suppressed on
FLAIR); T1 only sends messages.

Export: predictions (nnU-Net labels 0-3) back to the BraTS labels, geometry unchanged, one
``CASE.nii.gz`` per case (the names the BraTS portals expect). ``labels="auto"`` takes the label set
from the dataset.json that ``nnUNetv2_predict`` writes next to the predictions (a resection cavity
label: ``brats2024``, written unchanged), else from the source naming (with ``source``) or from the
case identifier (``BraTS-...``: 2023 set, ``BraTS20_``/``BraTS2021_``: 2020 set).
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.Dataset137_BraTS21 import (convert_labels_back_to_BraTS,
                                                            copy_BraTS_segmentation_and_convert_labels_to_nnUNet)

from nnunetv2_ciml.image_io import check_label_values, geometry_mismatch, header_info

from .common import (FILE_ENDING, CaseCandidate, ConversionError, ConversionReport, DatasetSpec, ExportReport,
                     SourceCase, check_same_grid, check_sources, convert_dataset, copy_image,
                     export_predictions, image_file, read_image, resolve_candidates, rglob_files)
from .submission import archive

BRATS2020, BRATS2023, BRATS2024 = "brats2020", "brats2023", "brats2024"
# channel order of nnU-Net's Dataset137: T1, T1ce, T2, FLAIR
_MODALITIES = {BRATS2020: ("t1", "t1ce", "t2", "flair"), BRATS2023: ("t1n", "t1c", "t2w", "t2f")}
_SEPARATOR = {BRATS2020: "_", BRATS2023: "-"}
_FILE_PATTERNS = {conv: re.compile(rf"^(?P<case>.+){_SEPARATOR[conv]}(?P<part>{'|'.join(mods + ('seg',))})"
                                   r"\.nii(\.gz)?$") for conv, mods in _MODALITIES.items()}
_BRATS_LABELS = {BRATS2020: (0, 1, 2, 4), BRATS2023: (0, 1, 2, 3), BRATS2024: (0, 1, 2, 3, 4)}
_LABEL_MEANING = {BRATS2020: "BraTS 2020: 1 NCR/NET, 2 edema, 4 enhancing tumor",
                  BRATS2023: "BraTS 2023: 1 NETC, 2 SNFH, 3 enhancing tumor",
                  BRATS2024: "BraTS 2024 post-treatment: 1 NETC, 2 SNFH, 3 enhancing tumor, 4 resection cavity"}
RESECTION_CAVITY = "resection cavity"
# BraTS 2023 labels -> nnU-Net's BraTS labels (same meaning as nnU-Net's 2020 mapping: 2->1, 1->2, ET->3)
_BRATS2023_TO_NNUNET = np.array([0, 2, 1, 3], dtype=np.uint8)

SPEC = DatasetSpec(
    channel_names={0: "T1", 1: "T1ce", 2: "T2", 3: "FLAIR"},
    labels={"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)},
    regions_class_order=(1, 2, 3),
    ciml={"subtasks": {"whole tumor": {"primary": "FLAIR", "outputs": ["whole tumor"]},
                       "tumor core": {"primary": "T1ce", "outputs": ["tumor core", "enhancing tumor"]}}},
    description="BraTS multimodal MRI, region training (nnU-Net labels: 1 edema, 2 NCR/NETC, 3 ET)",
    reference="https://www.synapse.org/brats",
    license="see the BraTS data terms of use",
)
# post-treatment glioma (BraTS 2024+): label files keep the BraTS values; regions as the official evaluation
SPEC_POST_TREATMENT = DatasetSpec(
    channel_names=SPEC.channel_names,
    labels={"background": 0, "whole tumor": (1, 2, 3), "tumor core": (1, 3), "enhancing tumor": (3,),
            RESECTION_CAVITY: (4,)},
    regions_class_order=(2, 1, 3, 4),
    ciml={"subtasks": {"whole tumor": {"primary": "FLAIR", "outputs": ["whole tumor"]},
                       "tumor core": {"primary": "T1ce", "outputs": ["tumor core", "enhancing tumor"]},
                       RESECTION_CAVITY: {"primary": "T2", "outputs": [RESECTION_CAVITY]}}},
    description="BraTS 2024+ post-treatment glioma MRI, region training (labels: 1 NETC, 2 SNFH, 3 ET, 4 RC)",
    reference="https://www.synapse.org/brats",
    license="see the BraTS data terms of use",
)


def discover(sources: Sequence[Path]) -> List[CaseCandidate]:
    """BraTS cases below ``sources``: one per (folder, case prefix, naming convention)."""
    parts: Dict[tuple, Dict[str, Path]] = defaultdict(dict)
    for path in rglob_files(sources, "*.nii*"):
        for conv, pattern in _FILE_PATTERNS.items():
            m = pattern.match(path.name)
            if m:
                key = (path.parent, m["case"], conv)
                if m["part"] in parts[key]:
                    raise ConversionError(f"case '{m['case']}': two files for '{m['part']}': "
                                          f"'{parts[key][m['part']]}' and '{path}'")
                parts[key][m["part"]] = path
    candidates = []
    for (folder, case_id, conv), files in sorted(parts.items()):
        sep = _SEPARATOR[conv]
        patient = re.sub(r"-\d{3}$", "", case_id) if conv == BRATS2023 else case_id  # 2023: -NNN is the timepoint
        candidates.append(CaseCandidate(
            case_id=case_id, patient=patient, group=folder.parent,
            images=[files.get(m) for m in _MODALITIES[conv]],
            image_descriptions=[f"'{folder / (case_id + sep + m + FILE_ENDING)}'" for m in _MODALITIES[conv]],
            label=files.get("seg"), label_description=f"label file '{folder / (case_id + sep + 'seg' + FILE_ENDING)}'",
            convention=conv))
    return candidates


def convert_case(case: SourceCase, out: Path, labels: str = "auto") -> List[str]:
    """Copy the four channels, convert the label (``labels``: ``auto`` -> nnU-Net's BraTS labels,
    ``brats2024`` -> BraTS 2024 labels). Shapes: all (X, Y, Z) on one grid."""
    images = [read_image(p, case.case_id) for p in case.images]
    files = list(case.images)
    if case.label is not None:
        label = read_image(case.label, case.case_id)
        check_same_grid(case.case_id, files + [case.label], images + [label])
    else:
        check_same_grid(case.case_id, files, images)
    sub = "imagesTr" if case.label is not None else "imagesTs"
    for c, (src, img) in enumerate(zip(files, images)):
        copy_image(src, img, image_file(out / sub, case.case_id, c))
    if case.label is not None:
        array = sitk.GetArrayViewFromImage(label)
        dst = out / "labelsTr" / f"{case.case_id}{FILE_ENDING}"
        if labels == BRATS2024:
            convention = BRATS2020 if case.convention == BRATS2020 else BRATS2024
            check_label_values(array, _BRATS_LABELS[convention], case.case_id, case.label,
                               meaning=_LABEL_MEANING[convention], error=ConversionError)
            values = np.asarray(array).astype(np.uint8)
            if convention == BRATS2020:
                values = np.where(values == 4, 3, values).astype(np.uint8)
            converted = sitk.GetImageFromArray(values)
            converted.CopyInformation(label)
            sitk.WriteImage(converted, str(dst), True)
            return []
        if case.convention == BRATS2023 and np.any(np.asarray(array) == 4):
            raise ConversionError(f"case '{case.case_id}': label file '{case.label}' contains 4, the BraTS 2024 "
                                  "post-treatment resection cavity; convert post-treatment data with --labels "
                                  "brats2024 (labels=\"brats2024\")")
        check_label_values(array, _BRATS_LABELS[case.convention], case.case_id, case.label,
                           meaning=_LABEL_MEANING[case.convention], error=ConversionError)
        if case.convention == BRATS2020:
            copy_BraTS_segmentation_and_convert_labels_to_nnUNet(str(case.label), str(dst))
        else:
            converted = sitk.GetImageFromArray(_BRATS2023_TO_NNUNET[np.asarray(array).astype(np.uint8)])
            converted.CopyInformation(label)
            sitk.WriteImage(converted, str(dst), True)
    return []


def default_name(sources: Sequence[Path], labels: str = "auto") -> str:
    if labels == BRATS2024:
        return "BraTS2024"
    cases, _ = resolve_candidates(discover(check_sources(sources)))
    conventions = {c.convention for c in cases}
    return "BraTS2023" if conventions == {BRATS2023} else "BraTS2020" if conventions == {BRATS2020} else "BraTS"


def convert_brats(sources: Sequence[Path], dataset_id: int, name: Optional[str] = None,
                  num_processes: Optional[int] = None, overwrite: bool = False,
                  skip_incomplete: bool = False, labels: str = "auto") -> ConversionReport:
    """Convert BraTS folders into ``$nnUNet_raw/DatasetXXX_NAME`` (NAME defaults to BraTS2020/2023/2024).

    ``labels``: ``auto`` (2020 or 2023 label sets, from the file naming) or ``brats2024`` (post-treatment
    glioma with resection cavity; see the module docstring).
    """
    if labels not in ("auto", BRATS2024):
        raise ConversionError(f"labels must be 'auto' or '{BRATS2024}', got '{labels}'")
    sources = [Path(s) for s in sources]
    spec = SPEC_POST_TREATMENT if labels == BRATS2024 else SPEC
    report = convert_dataset("BraTS", sources, discover, partial(convert_case, labels=labels), spec, dataset_id,
                             name or default_name(sources, labels), num_processes, overwrite, skip_incomplete)
    if labels == BRATS2024 and not _any_resection_cavity(report.dataset_folder / "labelsTr"):
        report.warnings.append("--labels brats2024, but no training label holds 4 (resection cavity): the RC "
                               "region is empty in every case and the model will never predict it. Are these "
                               "post-treatment (BraTS 2024+) data? Pre-treatment data convert without --labels.")
    return report


def _any_resection_cavity(labels_dir: Path) -> bool:
    """Whether any label file of the converted dataset holds label 4 (stops at the first that does)."""
    # a copy, not GetArrayViewFromImage: a view of a temporary image reads freed memory once the image is collected
    return any(np.any(sitk.GetArrayFromImage(sitk.ReadImage(str(f))) == 4)
               for f in sorted(labels_dir.glob(f"*{FILE_ENDING}")))


# ----------------------------------------------------------------------------------------------- export


def labels_convention_of(case_id: str) -> Optional[str]:
    """The BraTS label set implied by a case identifier, or None if it says nothing."""
    if case_id.startswith("BraTS-"):
        return BRATS2023
    if re.match(r"^BraTS(20|2021)?_", case_id):
        return BRATS2020
    return None


def nnunet_to_brats_labels(seg: np.ndarray, convention: str) -> np.ndarray:
    """nnU-Net BraTS labels (1 edema, 2 NCR, 3 ET) -> BraTS labels of ``convention``; shape unchanged."""
    brats = convert_labels_back_to_BraTS(seg)
    if convention == BRATS2023:
        brats[brats == 4] = 3
    return brats.astype(np.uint8)


def _export_case(job: tuple, dst: Path) -> List[str]:
    case_id, pred_file, convention, reference = job
    pred = read_image(pred_file, case_id, "prediction")
    if reference is not None:
        ref_file, ref_info = reference
        problem = geometry_mismatch(pred, ref_info)
        if problem:
            raise ConversionError(f"case '{case_id}': prediction '{pred_file}' is not on the grid of '{ref_file}' "
                                  f"({problem})")
    array = sitk.GetArrayFromImage(pred)
    if convention == BRATS2024:  # a post-treatment dataset predicts BraTS 2024 labels directly
        check_label_values(array, _BRATS_LABELS[BRATS2024], case_id, pred_file, meaning=_LABEL_MEANING[BRATS2024],
                           error=ConversionError)
        brats = array.astype(np.uint8)
    else:
        check_label_values(array, (0, 1, 2, 3), case_id, pred_file,
                           meaning="nnU-Net BraTS labels: 1 edema, 2 NCR, 3 ET; predictions of a post-treatment "
                                   "dataset need --labels brats2024", error=ConversionError)
        brats = nnunet_to_brats_labels(array, convention)
    out = sitk.GetImageFromArray(brats)
    out.CopyInformation(pred)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(dst), True)
    return []


def export_brats(pred_dir: Path, out_dir: Path, labels: str = "auto", source: Optional[Sequence[Path]] = None,
                 num_processes: Optional[int] = None, overwrite: bool = False,
                 zip_file: Optional[Path] = None) -> ExportReport:
    """nnU-Net predictions -> ``out_dir/CASE.nii.gz`` with BraTS labels (``labels``: auto, brats2020, brats2023,
    brats2024), and with ``zip_file`` the flat upload archive of them (written before they are moved into place).

    With ``source`` (the BraTS folders the cases came from), every prediction must match a source
    case and lie on its grid, and ``auto`` uses the case's naming convention. A ``dataset.json`` in
    ``pred_dir`` (``nnUNetv2_predict`` writes one) with a resection cavity label means a post-treatment
    dataset: ``auto`` becomes ``brats2024`` and the 2020/2023 label sets are refused.
    """
    if labels not in ("auto", BRATS2020, BRATS2023, BRATS2024):
        raise ConversionError(f"labels must be 'auto', '{BRATS2020}', '{BRATS2023}' or '{BRATS2024}', got '{labels}'")
    if _is_post_treatment_prediction(Path(pred_dir)):
        if labels in (BRATS2020, BRATS2023):
            raise ConversionError(f"'{Path(pred_dir) / 'dataset.json'}' has a '{RESECTION_CAVITY}' label: these are "
                                  f"predictions of a post-treatment dataset; export them with --labels {BRATS2024}")
        labels = BRATS2024

    sources = check_sources(source) if source else []
    known = {c.case_id: c for c in resolve_candidates(discover(sources))[0]} if sources else {}

    def plan(case_id: str, pred_file: Path):
        reference, convention = None, labels
        if sources:
            case = known.get(case_id)
            if case is None:
                raise ConversionError(f"prediction '{pred_file}': no complete BraTS case '{case_id}' under "
                                      f"{', '.join(map(str, sources))}")
            reference = (case.images[3], header_info(case.images[3]))
            if convention == "auto":
                convention = case.convention
        if convention == "auto":
            convention = labels_convention_of(case_id)
            if convention is None:
                raise ConversionError(f"prediction '{pred_file}': cannot tell the BraTS label set from the case name "
                                      f"'{case_id}'; pass --labels {BRATS2020} or --labels {BRATS2023} (or --source)")
        dst = Path(out_dir) / f"{case_id}{FILE_ENDING}"
        return dst, (case_id, pred_file, convention, reference)

    return export_predictions("BraTS", Path(pred_dir), Path(out_dir), plan, _export_case, sources,
                              num_processes, overwrite, archive(zip_file, overwrite))


def _is_post_treatment_prediction(pred_dir: Path) -> bool:
    """True if ``pred_dir/dataset.json`` (written by ``nnUNetv2_predict``) has a resection cavity label."""
    dataset_json = pred_dir / "dataset.json"
    if not dataset_json.is_file():
        return False
    try:
        return RESECTION_CAVITY in json.loads(dataset_json.read_text()).get("labels", {})
    except (ValueError, AttributeError) as e:
        raise ConversionError(f"'{dataset_json}' is not a readable dataset.json: {e}") from None


__all__ = ["convert_brats", "export_brats", "discover", "convert_case", "nnunet_to_brats_labels", "SPEC",
           "SPEC_POST_TREATMENT", "BRATS2020", "BRATS2023", "BRATS2024"]
