"""Cost of the checked reading path (:mod:`nnunetv2_ciml.image_io`) against a plain ``sitk.ReadImage``.

Files: the four MRI channels (int16) and one segmentation (uint8) of a BraTS case (``--case``: by default the
repository's cropped copy of TCGA-DU-7294 in ``tests/data``; pass a folder with the original 240 x 240 x 155
files, named the same way, for full-size timings), and a float32 copy of the FLAIR channel
written to a temporary folder (float data is where the NaN/Inf check runs). For each file it reports
the median of ``--repeats`` interleaved timings of ``sitk.ReadImage`` (which checks neither the gzip CRC nor
NaN/Inf), ``read_image`` (full gzip check, NaN/Inf check, one decompression) and ``verify_image_file``
(the checks without building an image), with the ratio to ``sitk.ReadImage`` measured in the same
run, and checks that ``read_image`` gives SimpleITK's voxels and geometry.

    python benchmarks/bench_image_io.py [--repeats 7] [--case DIR]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunetv2_ciml.image_io import read_image, verify_image_file

CASE = Path(__file__).resolve().parents[1] / "tests" / "data" / "brats_TCGA-DU-7294"


def median_seconds(fns, repeats: int) -> list:
    """Median time of each function; the functions alternate within each repeat so that load on a shared
    machine hits all of them alike."""
    for fn in fns:
        fn()  # warm the page cache
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--case", type=Path, default=CASE, help="folder of TCGA-DU-7294_*.nii.gz and isen-20.nii.gz")
    args = parser.parse_args()
    DATA = args.case
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found")
    with tempfile.TemporaryDirectory() as tmp:
        flair = sitk.ReadImage(str(DATA / "TCGA-DU-7294_fla_bet.nii.gz"))
        as_float = sitk.Cast(flair, sitk.sitkFloat32)
        float_file = Path(tmp) / "TCGA-DU-7294_fla_bet_float32.nii.gz"
        sitk.WriteImage(as_float, str(float_file), True)
        files = sorted(DATA.glob("TCGA-DU-7294_*.nii.gz")) + [DATA / "isen-20.nii.gz", float_file]
        print(f"{'file':36s} {'MB':>6s} {'sitk ms':>8s} {'read ms':>8s} {'ratio':>6s} {'verify ms':>9s} {'ratio':>6s}")
        ratios = []
        for f in files:
            reference, ours = sitk.ReadImage(str(f)), read_image(f)
            assert ours.GetPixelID() == reference.GetPixelID() and ours.GetSize() == reference.GetSize()
            assert ours.GetSpacing() == reference.GetSpacing() and ours.GetOrigin() == reference.GetOrigin()
            assert ours.GetDirection() == reference.GetDirection()
            assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(reference))
            t_sitk, t_read, t_verify = median_seconds(
                [lambda: sitk.ReadImage(str(f)), lambda: read_image(f), lambda: verify_image_file(f)], args.repeats)
            ratios.append(t_read / t_sitk)
            print(f"{f.name:36s} {f.stat().st_size / 1e6:6.2f} {1e3 * t_sitk:8.1f} {1e3 * t_read:8.1f} "
                  f"{t_read / t_sitk:6.2f} {1e3 * t_verify:9.1f} {t_verify / t_sitk:6.2f}")
        print(f"read_image / sitk.ReadImage: median {statistics.median(ratios):.2f}x over {len(files)} files "
              f"(voxels, pixel type and geometry identical)")


if __name__ == "__main__":
    main()
