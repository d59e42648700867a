"""One reading path for every image the package reads: complete, finite, or an error naming case and file.

SimpleITK alone is silently wrong on two kinds of bad files: a truncated ``.nii.gz`` reads as an image
whose missing part is zero, and NaN/Inf voxels of float NIfTI data are replaced by 0 (nifti1_io's
"bad float" fix). So NIfTI files (``.nii``, ``.nii.gz``) are read here once, in full:

1. the whole file is decompressed (zlib-ng's ``gzip_ng``, about twice as fast as Python's ``gzip``,
   which is used when zlib-ng is missing), every member's CRC-32 and length checked;
2. the NIfTI-1/2 header is parsed with nibabel and the voxel data must be as long as the header says;
3. float voxels must be finite (checked on the stored values, before any reader touches them);
4. the ``sitk.Image`` is built from those same bytes, with the geometry (spacing, origin, direction)
   and meta-data that SimpleITK's own NIfTI reader gives, read from the header alone. Files whose
   voxels SimpleITK would transform (scaled ``scl_slope``/``scl_inter``, vector or RGB voxels, more than
   3D) are handed to ``sitk.ReadImage`` after the checks, so the result always equals SimpleITK's.

Other formats (``.mha``, ``.nrrd``, ``.png``, ...) are read by SimpleITK and their float voxels checked
(SimpleITK keeps NaN/Inf as stored for these: its NaN-to-0 replacement is in its NIfTI reader only). ITK refuses
a truncated MetaImage (``.mha``) but explains it with a stale system error ("No such file or directory"), so
for a MetaImage it cannot read, the header is compared with the file's size to say that the file is truncated.
:func:`verify_image_file` does steps 1-3 without building an image, for files that another reader
(nnU-Net's) reads afterwards. Arrays are in SimpleITK order, ``(Z, Y, X)``. :func:`check_label_values` is the
one check of a label image's values (conversion, export and evaluation); :func:`check_normalisable` the one check that
an image's finite values survive nnU-Net's intensity normalisation (prediction and explanation).
"""
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Tuple, Type, Union

import numpy as np
import SimpleITK as sitk

from nnunetv2_ciml.errors import CIMLError

try:
    from zlib_ng import gzip_ng as _gzip
except ImportError:  # pragma: no cover - zlib-ng is a dependency; the standard library checks the same
    import gzip as _gzip

__all__ = ["ImageFileError", "ImageInfo", "read_image", "read_image_array", "verify_image_file", "file_label",
           "geometry_mismatch", "header_info", "check_label_values", "check_normalisable"]

PathLike = Union[str, Path]
NIFTI_ENDINGS = (".nii", ".nii.gz")
_GZIP_MAGIC = b"\x1f\x8b"
SPACING_ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


class ImageFileError(CIMLError, ValueError):
    """An image file that cannot be used: unreadable, truncated, corrupt or holding NaN/Inf voxels."""

    def __init__(self, message: str, path: PathLike, case: Optional[str] = None):
        super().__init__(message)
        self.path, self.case = Path(path), case


@dataclass(frozen=True)
class ImageInfo:
    """A checked file's grid as SimpleITK reads it: ``size``/``spacing`` (mm) in (x, y, z) order."""

    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]
    components: int


def file_label(path: PathLike, case: Optional[str] = None, role: str = "image") -> str:
    """``"case 'X': <role> file '<path>'"``, the way every message of this module starts."""
    return (f"case '{case}': " if case is not None else "") + f"{role} file '{path}'"


def read_image(path: PathLike, case: Optional[str] = None, role: str = "image") -> sitk.Image:
    """The image in ``path``, checked complete and finite; :class:`ImageFileError` otherwise.

    ``case`` and ``role`` ("image", "label", "reference", "prediction", ...) only go into error messages.
    """
    return _read(Path(path), case, role, build=True)[0]


def read_image_array(path: PathLike, case: Optional[str] = None, role: str = "image") -> np.ndarray:
    """:func:`read_image`'s voxels as an array ``(Z, Y, X)`` (``(Y, X)`` for 2D)."""
    return sitk.GetArrayFromImage(read_image(path, case, role))


def verify_image_file(path: PathLike, case: Optional[str] = None, role: str = "image") -> ImageInfo:
    """Check ``path`` as :func:`read_image` does without building the image; returns its grid."""
    return _read(Path(path), case, role, build=False)[1]


# ------------------------------------------------------------------------------------------- internals


def _fail(path: Path, case: Optional[str], role: str, problem: str) -> ImageFileError:
    return ImageFileError(f"{file_label(path, case, role)} {problem}", path, case)


def _itk_reason(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__  # ITK puts the useful sentence last


def header_info(path: PathLike) -> ImageInfo:
    """The grid of an image file, from its header alone."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return _info(reader)


def geometry_mismatch(image: Union[sitk.Image, ImageInfo], reference: Union[sitk.Image, ImageInfo]) -> Optional[str]:
    """The package's one rule for "the same voxel grid" (channels of a case, a prediction and its reference):
    the first difference in dimension, size, spacing or origin
    (within 1e-3 mm) or direction (within 1e-4), described for an error message, or None if there is none."""
    image, reference = (_info(i) if isinstance(i, sitk.Image) else i for i in (image, reference))
    if len(image.size) != len(reference.size):
        return f"dimension {len(image.size)}D vs reference {len(reference.size)}D"
    for what, value, expected, atol in (("shape (x, y, z)", image.size, reference.size, 0),
                                        ("spacing (mm, x, y, z)", image.spacing, reference.spacing, SPACING_ORIGIN_ATOL_MM),
                                        ("origin (mm, x, y, z)", image.origin, reference.origin, SPACING_ORIGIN_ATOL_MM),
                                        ("direction", image.direction, reference.direction, DIRECTION_ATOL)):
        if not np.allclose(value, expected, rtol=0, atol=atol):
            return f"{what} {tuple(value)} vs reference {tuple(expected)}"
    return None


def _read(path: Path, case: Optional[str], role: str, build: bool) -> Tuple[Optional[sitk.Image], ImageInfo]:
    if not path.is_file():
        raise _fail(path, case, role, "does not exist" if not path.exists() else "is not a file")
    if path.name.lower().endswith(NIFTI_ENDINGS):
        return _read_nifti(path, case, role, build)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        problem = _metaimage_truncation(path) if path.name.lower().endswith(".mha") else None
        raise _fail(path, case, role, f"cannot be read: {problem or _itk_reason(e)}") from None
    _check_finite(sitk.GetArrayViewFromImage(image), path, case, role)
    return image, _info(image)


# bytes per element of MetaImage's ElementType
_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _metaimage_truncation(path: Path) -> Optional[str]:
    """Why a single-file MetaImage that ITK cannot read is truncated (its data shorter than the header says),
    or None if it is not (or the header cannot tell): ITK's own message names a stale system error."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
        size = path.stat().st_size
    except OSError:
        return None
    fields, offset = {}, 0
    for line in head.split(b"\n"):
        offset += len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            return None
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        return None
    if fields.get("ElementDataFile") != "LOCAL":
        return None
    try:
        if fields.get("CompressedData", "False").lower() == "true":
            needed = int(fields["CompressedDataSize"])
        else:
            channels = int(fields.get("ElementNumberOfChannels", "1"))
            needed = int(np.prod([int(d) for d in fields["DimSize"].split()], dtype=np.int64)) * channels \
                * _MET_SIZES[fields["ElementType"]]
    except (KeyError, ValueError):
        return None
    stored = size - offset
    if stored >= needed:
        return None
    return (f"the file is truncated ({max(stored, 0)} of {needed} bytes of "
            f"{'compressed ' if fields.get('CompressedData', '').lower() == 'true' else ''}voxel data); copy or "
            "download it again")


def _info(image: Union[sitk.Image, sitk.ImageFileReader]) -> ImageInfo:
    components = (image.GetNumberOfComponentsPerPixel() if isinstance(image, sitk.Image)
                  else image.GetNumberOfComponents())
    return ImageInfo(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                     tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()),
                     int(components))


def _decompressed(path: Path, case: Optional[str], role: str) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _fail(path, case, role, f"cannot be read: {e.strerror or e}") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw  # plain .nii (SimpleITK also reads an uncompressed file named .nii.gz)
    try:
        return _gzip.decompress(raw)
    except EOFError:
        raise _fail(path, case, role, "cannot be read: the file is truncated (its gzip stream ends before the "
                                      "end-of-stream marker); copy or download it again") from None
    except Exception as e:  # BadGzipFile (CRC, length, header), zlib's or zlib-ng's error on a bad block
        raise _fail(path, case, role, f"cannot be read: the file is corrupt (gzip: {e}); copy or download "
                                      "it again") from None


def _nifti_header(data: bytes, path: Path, case: Optional[str], role: str):
    import nibabel

    if len(data) < 4:
        raise _fail(path, case, role, f"cannot be read: {len(data)} bytes is too short for a NIfTI header")
    sizes = {struct.unpack("<i", data[:4])[0], struct.unpack(">i", data[:4])[0]}
    header_class = nibabel.Nifti1Header if 348 in sizes else nibabel.Nifti2Header if 540 in sizes else None
    if header_class is None:
        raise _fail(path, case, role, "cannot be read: not a NIfTI-1 or NIfTI-2 file (no valid header size)")
    try:  # lenient like SimpleITK (check=False); what matters is checked below and by SimpleITK's header read
        header = header_class.from_fileobj(io.BytesIO(data), check=False)
        dtype = header.get_data_dtype()
    except Exception as e:  # nibabel raises HeaderDataError, ValueError or struct errors on a bad header
        raise _fail(path, case, role, f"cannot be read: invalid NIfTI header ({e})") from None
    magic = bytes(header["magic"]).rstrip(b"\0")
    if magic not in (b"n+1", b"n+2"):
        raise _fail(path, case, role, f"cannot be read: not a single-file NIfTI (magic {magic!r})")
    return header, dtype


def _read_nifti(path: Path, case: Optional[str], role: str, build: bool) -> Tuple[Optional[sitk.Image], ImageInfo]:
    data = _decompressed(path, case, role)
    header, dtype = _nifti_header(data, path, case, role)
    shape = tuple(int(s) for s in header.get_data_shape())
    offset = int(header.get_data_offset())
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < offset + needed:
        raise _fail(path, case, role, f"cannot be read: the file is truncated ({max(len(data) - offset, 0)} of "
                                      f"{needed} bytes of voxel data for shape {shape}, {dtype}); copy or download "
                                      "it again")
    stored = np.frombuffer(data, dtype=dtype, count=needed // dtype.itemsize, offset=offset).reshape(shape[::-1])
    if dtype.fields is None:
        _check_finite(stored, path, case, role)
    # NIfTI: slope 0 means no scaling; nibabel writes NaN for "no scaling", which SimpleITK also ignores
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    scaled = np.isfinite(slope) and slope != 0 and (slope != 1 or (np.isfinite(inter) and inter != 0))

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise _fail(path, case, role, f"cannot be read: {_itk_reason(e)}") from None
    info = _info(reader)
    if not build:
        return None, info
    native = stored.astype(dtype.newbyteorder("="), copy=False) if dtype.fields is None else None
    fast = (native is not None and not scaled and dtype.kind in "iuf" and len(shape) in (2, 3)
            and info.components == 1 and info.size == shape)
    image = sitk.GetImageFromArray(native) if fast else None
    if image is None or image.GetPixelID() != reader.GetPixelID():
        try:  # what SimpleITK's reader would transform is left to it (the file is checked by now)
            image = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise _fail(path, case, role, f"cannot be read: {_itk_reason(e)}") from None
        _check_finite(sitk.GetArrayViewFromImage(image), path, case, role)
        return image, info
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    for key in reader.GetMetaDataKeys():
        image.SetMetaData(key, reader.GetMetaData(key))
    return image, info


def _check_finite(array: np.ndarray, path: Path, case: Optional[str], role: str) -> None:
    """Raise if a float ``array`` holds NaN or +-Inf.

    Fast path: a float64 sum is finite iff every voxel is (float32 data cannot overflow it); only when it
    is not (or for float64 data that may overflow) are the voxels tested one by one.
    """
    if array.dtype.kind not in "fc" or array.size == 0:
        return
    if np.isfinite(array.sum(dtype=np.complex128 if array.dtype.kind == "c" else np.float64)):
        return
    if np.isfinite(array).all():
        return
    nan, inf = int(np.count_nonzero(np.isnan(array))), int(np.count_nonzero(np.isinf(array)))
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(~np.isfinite(array))), array.shape)[::-1])
    raise _fail(path, case, role, f"holds non-finite voxel values ({nan} NaN, {inf} infinite of {array.size} "
                                  f"voxels; the first at index (x, y, z) {first}); SimpleITK would read them as 0: "
                                  "repair or replace the file")


def check_normalisable(array: np.ndarray, path: PathLike, case: Optional[str] = None, role: str = "image") -> None:
    """Raise :class:`ImageFileError` when nnU-Net's normalisation of ``array`` would overflow: it normalises in
    float32, where values such as 1e30 are finite but their standard deviation is not (the z-scored image becomes 0
    everywhere and the network reads a blank channel as data), and float64 values beyond 3.4e38 become infinite."""
    values = np.asarray(array, dtype=np.float32)
    if values.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        finite = bool(np.isfinite(values).all() and np.isfinite(values.mean()) and np.isfinite(values.std()))
    if not finite:
        largest = float(np.abs(np.asarray(array, dtype=np.float64)).max())
        raise _fail(Path(path), case, role, f"holds values too large to normalise (largest magnitude {largest:.3g}: "
                                            "in float32, where nnU-Net normalises, their mean or standard deviation "
                                            "overflows and the image would read as zeros); rescale the image")


def _label_values(array: np.ndarray) -> np.ndarray:
    """The distinct values of a label array (counted, not sorted, for small non-negative integers)."""
    if array.dtype.kind in "ub" or (array.dtype.kind == "i" and array.size and array.min() >= 0):
        if array.size and int(array.max()) < 65536:
            return np.flatnonzero(np.bincount(array.ravel().astype(np.intp, copy=False)))
    return np.unique(array)


def check_label_values(array: np.ndarray, allowed: Iterable[int], case: str, path: PathLike, role: str = "label",
                       meaning: str = "", error: Type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the case, the file (``role``: "label", "prediction", ...), the unexpected values and
    the expected ones (with their ``meaning``) if ``array`` holds values outside ``allowed``."""
    allowed = sorted({int(v) for v in allowed})
    bad = np.setdiff1d(_label_values(np.asarray(array)), np.asarray(allowed))
    if bad.size:
        raise error(f"case '{case}': {role} file '{path}' contains values {bad[:10].tolist()}; expected only "
                    f"{allowed}{' (' + meaning + ')' if meaning else ''}")
