"""Build the folder of an autoPET III grand-challenge algorithm container from a trained CIML model.

``build_autopet_submission(model_folder, folds, out_dir)`` writes::

    out_dir/
      Dockerfile         official PyTorch CUDA runtime image, non-root user "algorithm" (as the
                         organisers' baseline), pinned requirements, our package, the model, and the
                         entry point python -m nnunetv2_ciml.submission.autopet_process
      requirements.txt   nnunetv2 and dynamic-network-architectures pinned to the versions installed where
                         the folder is built (build it in the environment the model was trained with), and
                         the rest of nnunetv2_ciml's requirements (torch comes with the image)
      package/           a copy of the installed nnunetv2_ciml (put on PYTHONPATH in the image)
      model/             plans.json, dataset.json (+ dataset_fingerprint.json) and fold_X/CHECKPOINT of the
                         chosen folds only
      build.sh           docker build -t NAME .
      export.sh          docker save NAME | gzip -c > NAME.tar.gz (the file the challenge's upload page takes)
      README.md          these steps and a local test run

The entry point and its input/output conventions are documented in
:mod:`nnunetv2_ciml.submission.autopet_process`. Nothing is built here (no Docker needed); the
folder is checked for completeness and the model for one CT and one PET channel.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import List, Sequence, Union

import nnunetv2_ciml
from nnunetv2_ciml.submission.autopet_process import OUTPUT_SLUG, SubmissionError, channel_order

__all__ = ["DEFAULT_BASE_IMAGE", "build_autopet_submission"]

# an official PyTorch CUDA runtime image (Docker Hub pytorch/pytorch); its torch satisfies nnunetv2_ciml's pin
DEFAULT_BASE_IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
IMAGE_NAME = "autopet_ciml"
_MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_PINNED = ("nnunetv2", "dynamic-network-architectures")


def _requirements() -> List[str]:
    """nnunetv2_ciml's install requirements, nnU-Net's pinned to the installed versions, without torch."""
    try:
        declared = requires("nnunetv2-ciml") or []
    except PackageNotFoundError:
        declared = []
    names = {}
    for req in declared:
        if "extra ==" in req:
            continue
        name = req.split(";")[0].strip()
        key = name.split("[")[0]
        for sep in ("<", ">", "=", "!", "~", " "):
            key = key.split(sep)[0]
        names[key.strip().lower()] = name
    names.pop("torch", None)
    for package in _PINNED:
        names[package] = f"{package}=={version(package)}"
    names.setdefault("simpleitk", f"SimpleITK>={version('SimpleITK')}")
    return sorted(names.values(), key=str.lower)


def _dockerfile(base_image: str, folds: Sequence[str], checkpoint: str) -> str:
    entry = ["python", "-m", "nnunetv2_ciml.submission.autopet_process", "--model", "/opt/algorithm/model",
             "--checkpoint", checkpoint, "--folds", *folds]
    return f"""# autoPET III algorithm container: CIML (nnunetv2_ciml) through nnU-Net's predictor.
# Interface as the organisers' baseline (ClinicalDataScience/autoPETIII, nnunet-baseline):
#   /input/images/ct/*.mha, /input/images/pet/*.mha -> /output/{OUTPUT_SLUG}/<uid>.mha
FROM {base_image}

ENV PYTHONUNBUFFERED=1

RUN groupadd -r algorithm && \\
    useradd -m --no-log-init -r -g algorithm algorithm && \\
    mkdir -p /opt/algorithm /input /output /output/{OUTPUT_SLUG} && \\
    chown -R algorithm:algorithm /opt/algorithm /input /output

USER algorithm
WORKDIR /opt/algorithm
ENV PATH="/home/algorithm/.local/bin:${{PATH}}"

COPY --chown=algorithm:algorithm requirements.txt /opt/algorithm/
RUN python -m pip install --user --no-cache-dir -U pip && \\
    python -m pip install --user --no-cache-dir -r requirements.txt

COPY --chown=algorithm:algorithm package /opt/algorithm/package
COPY --chown=algorithm:algorithm model /opt/algorithm/model

# no torch.compile: its start-up time counts against the challenge's time limit per case
ENV PYTHONPATH="/opt/algorithm/package" \\
    nnUNet_raw="/opt/algorithm/nnUNet_raw" \\
    nnUNet_preprocessed="/opt/algorithm/nnUNet_preprocessed" \\
    nnUNet_results="/opt/algorithm/model" \\
    nnUNet_compile="f"

ENTRYPOINT {json.dumps(entry)}
"""


_README = """# autoPET III submission (CIML via nnU-Net)

Built by `nnunetv2_ciml submission autopet`. Folds: {folds}; checkpoint: {checkpoint}.

1. `bash build.sh` builds the image `{image}` (needs Docker and network access for pip).
2. Local test, as the challenge runs it (GPU, no network), with a case laid out as
   `test/input/images/ct/<uid>.mha` and `test/input/images/pet/<uid>.mha`:

       docker run --rm --gpus all --network none --shm-size 2g \\
           -v "$PWD/test/input:/input:ro" -v "$PWD/test/output:/output" {image}

   The mask appears as `test/output/{slug}/<uid>.mha` (on the PET grid).
3. `bash export.sh` writes `{image}.tar.gz`, the file to upload on the challenge's submission page.
"""


def build_autopet_submission(model_folder: Union[str, Path], folds: Sequence[Union[int, str]],
                             out_dir: Union[str, Path], checkpoint: str = "checkpoint_final.pth",
                             base_image: str = DEFAULT_BASE_IMAGE, overwrite: bool = False) -> Path:
    """Write the container folder ``out_dir`` for the model in ``model_folder`` (module docstring)."""

    model_folder, out_dir = Path(model_folder).resolve(), Path(out_dir).resolve()
    for name in ("plans.json", "dataset.json"):
        if not (model_folder / name).is_file():
            raise SubmissionError(f"'{model_folder / name}' not found: -m must be an nnU-Net training output folder "
                                  "(…/nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIGURATION)")
    channel_order(json.loads((model_folder / "dataset.json").read_text()))
    folds = [str(f) for f in folds]
    if not folds:
        raise SubmissionError("give at least one fold (-f)")
    for fold in folds:
        ckpt = model_folder / f"fold_{fold}" / checkpoint
        if not ckpt.is_file():
            raise SubmissionError(f"'{ckpt}' not found: fold {fold} is not trained (or pass --checkpoint)")
    if out_dir == model_folder or model_folder in out_dir.parents:
        raise SubmissionError(f"the output folder '{out_dir}' must not lie inside the model folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise SubmissionError(f"'{out_dir}' exists and is not empty; use --overwrite to replace it")
        shutil.rmtree(out_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    model = out_dir / "model"
    model.mkdir()
    for name in _MODEL_FILES:
        if (model_folder / name).is_file():
            shutil.copy2(model_folder / name, model / name)
    for fold in folds:
        (model / f"fold_{fold}").mkdir()
        shutil.copy2(model_folder / f"fold_{fold}" / checkpoint, model / f"fold_{fold}" / checkpoint)
    _copy_package(out_dir / "package" / "nnunetv2_ciml")
    (out_dir / "requirements.txt").write_text("\n".join(_requirements()) + "\n")
    (out_dir / "Dockerfile").write_text(_dockerfile(base_image, folds, checkpoint))
    (out_dir / "build.sh").write_text(f'#!/bin/bash\nset -e\ncd "$(dirname "$0")"\ndocker build -t {IMAGE_NAME} .\n')
    (out_dir / "export.sh").write_text(f'#!/bin/bash\nset -e\ncd "$(dirname "$0")"\nbash build.sh\n'
                                       f"docker save {IMAGE_NAME} | gzip -c > {IMAGE_NAME}.tar.gz\n")
    for script in ("build.sh", "export.sh"):
        (out_dir / script).chmod(0o755)
    (out_dir / "README.md").write_text(_README.format(folds=", ".join(folds), checkpoint=checkpoint, image=IMAGE_NAME,
                                                      slug=OUTPUT_SLUG))
    return out_dir


def _copy_package(destination: Path) -> None:
    """Copy the installed package to ``destination``, with ``dataset_conversion`` from where Python imports it (a
    source checkout maps it to the top-level ``dataset_conversion/`` folder: ``package_dir`` in setup.py)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(nnunetv2_ciml.__file__).resolve().parent, destination, ignore=ignore)
    conversion = Path(importlib.util.find_spec("nnunetv2_ciml.dataset_conversion").origin).resolve().parent
    shutil.copytree(conversion, destination / "dataset_conversion", ignore=ignore, dirs_exist_ok=True)
