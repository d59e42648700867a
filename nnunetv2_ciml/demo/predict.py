"""The demo's prediction stage: nnU-Net's predictor (``nnUNetPredictor``, the Python API of ``nnUNetv2_predict``)
on the held-out cases, one call per case."""
import contextlib
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, TextIO

from nnunetv2_ciml.demo import DemoError
from nnunetv2_ciml.demo.dataset import FOLD

__all__ = ["predict_model", "predict_case"]


def predict_model(model_folder: Path, cases: Dict[str, List[str]], out_dir: Path, device: str, log_file: Path,
                  description: str, verbose: bool, console: Optional[TextIO] = None):
    """Predict the cases with nnU-Net's predictor (no test-time mirroring: the demo trainers allow none);
    returns the predictor. nnU-Net's own prints go to ``log_file``; a progress line per case to ``console``
    (default stdout)."""
    import torch

    from nnunetv2_ciml.console_progress import progress

    out_dir.mkdir(parents=True, exist_ok=True)
    console = console if console is not None else sys.stdout
    with open(log_file, "w") as log, contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecations raised by nnU-Net's imports
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=device == "cuda", device=torch.device(device),
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(FOLD,),
                                                       checkpoint_name="checkpoint_final.pth")
        # one predictor, one call per case: a progress line per case, and an error that names its case
        for case, files in progress(cases.items(), len(cases), f"    {description}", enabled=verbose,
                                    stream=console):
            predict_case(predictor, case, files, out_dir)
    return predictor


def predict_case(predictor, case: str, files: List[str], out_dir: Path) -> None:
    """One case through nnU-Net's predictor, its files checked first; any failure names the case and its files."""
    from nnunetv2_ciml.image_io import verify_image_file

    for c, f in enumerate(files):
        verify_image_file(f, case, f"channel {c}")
    try:
        predictor.predict_from_files_sequential([files], [str(out_dir / case)], save_probabilities=False,
                                                overwrite=True)
    except Exception as e:
        raise DemoError(f"case '{case}' ({', '.join(files)}): nnU-Net's prediction failed: "
                        f"{type(e).__name__}: {e}") from e
