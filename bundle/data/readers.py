"""Image readers: PIL images with palette handling, JSRT raw ``.IMG`` files, and MONAI's medical readers.

MONAI's ``PILReader`` returns 2D arrays with axes swapped (``reverse_indexing=True``): array index 0 is the
image column (x), index 1 the row (y), so a W x H PNG loads as shape (W, H). ``JsrtRawReader`` follows the
same convention so that a raw JSRT image and its PNG/GIF masks share one grid.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import ImageReader, NibabelReader, PILReader, PydicomReader
from monai.data.meta_tensor import MetaTensor
from monai.transforms import LoadImage, LoadImaged
from monai.utils import ensure_tuple, optional_import
from PIL import Image

from bundle.errors import BundleInputError, MissingInputError

_, HAS_ITK = optional_import("itk")

# Suffixes (lower case) handled by each reader; ``read_image`` dispatches on them.
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
JSRT_SUFFIXES = (".img",)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm",)
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd")

JSRT_SHAPE = (2048, 2048)
JSRT_MAX_VALUE = 4095  # 12-bit data
JSRT_FILE_BYTES = JSRT_SHAPE[0] * JSRT_SHAPE[1] * 2

_PIL_KEEP_MODES = {"L", "RGB", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _has_suffix(name: os.PathLike | str, suffixes: Sequence[str]) -> bool:
    lower = Path(name).name.lower()
    return any(lower.endswith(s) for s in suffixes)


def pil_converter(image: Image.Image) -> Image.Image:
    """Convert a PIL image to a mode whose pixel values mean intensities.

    Palette images ("P", "PA") are mapped through their palette: some JSRT PNG copies store an inverted
    grey ramp palette, so the raw indices would give a negative image. A palette whose used entries are all
    grey (R == G == B) gives "L", any other palette "RGB". Alpha is dropped ("RGBA" -> "RGB", "LA" -> "L"),
    "1" -> "L" (0/255), "CMYK" -> "RGB"; 16/32-bit grey ("I;16", "I") and every other mode are kept.

    Args:
        image: an opened PIL image.

    Returns:
        The converted image (or ``image`` itself when no conversion is needed).
    """
    mode = image.mode
    if mode in _PIL_KEEP_MODES:
        return image
    if mode in ("P", "PA"):
        return image.convert("L" if _palette_is_grey(image) else "RGB")
    if mode in ("RGBA", "RGBa", "CMYK", "RGBX"):
        return image.convert("RGB")
    if mode in ("LA", "La", "1"):
        return image.convert("L")
    return image


def _palette_is_grey(image: Image.Image) -> bool:
    """Whether the palette entries that the image actually uses are all grey."""
    palette = image.getpalette(rawmode="RGB")
    if not palette:
        return True
    entries = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    # Only used entries matter: palettes are often padded with arbitrary colours.
    indices = np.asarray(image.getchannel(0) if image.mode == "PA" else image)
    used = np.unique(indices)
    used = used[used < len(entries)]
    rgb = entries[used]
    return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))


class _PILReader(PILReader):
    """``PILReader`` that also accepts GIF/TIFF and fails fast on other suffixes.

    ``LoadImage`` given explicit readers tries each in turn and catches errors, so refusing foreign
    suffixes early keeps loading fast and keeps a NIfTI file away from PIL.
    """

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return all(_has_suffix(f, PIL_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs: Any) -> Any:
        if not self.verify_suffix(data):
            raise ValueError(f"{data}: not a PIL image suffix {PIL_SUFFIXES}")
        return super().read(data, **kwargs)


class JsrtRawReader(ImageReader):
    """Read the released JSRT chest radiographs (``.IMG``): 2048 x 2048, 12-bit, big-endian uint16, no header.

    The raw values are film-density-like: a high value is dark (air in the lungs), a low value is bright
    (bone). Public JSRT-to-PNG converters therefore invert after reading (``1 - normalised value``), and the
    PNG copies that circulate (as in the shared 512 x 512 set) show bright bones. With ``invert=True``
    (default) the reader returns ``4095 - v`` so a raw image looks like those PNGs; values are clipped to
    the 12-bit range first.

    Arrays follow MONAI's ``PILReader`` convention (axis 0 = image column x, axis 1 = row y), so a raw
    image and its SCR masks (GIF, read by ``PILReader``) align. The affine is the identity, as for PNGs.

    Args:
        invert: return ``4095 - v`` (bright bones) instead of the stored value.
    """

    def __init__(self, invert: bool = True) -> None:
        super().__init__()
        self.invert = invert

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        """Accept ``.img``/``.IMG`` files."""
        return all(_has_suffix(f, JSRT_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs: Any) -> np.ndarray | list[np.ndarray]:
        """Read one file or several (stacked as channels by ``get_data``) into (rows, cols) arrays."""
        names = ensure_tuple(data)
        arrays = [self._read_one(Path(n)) for n in names]
        return arrays if len(names) > 1 else arrays[0]

    def _read_one(self, path: Path) -> np.ndarray:
        if not self.verify_suffix(path):
            raise ValueError(f"{path}: not a JSRT raw file (expected suffix .IMG)")
        if path.with_suffix(".hdr").exists() or path.with_suffix(".HDR").exists():
            # An .img next to an .hdr is an Analyze volume, not JSRT raw data.
            raise ValueError(f"{path}: has an Analyze .hdr header next to it; not a JSRT raw .IMG")
        size = path.stat().st_size
        if size != JSRT_FILE_BYTES:
            raise ValueError(
                f"{path}: {size} bytes, expected {JSRT_FILE_BYTES} bytes for a JSRT raw .IMG "
                f"({JSRT_SHAPE[0]}x{JSRT_SHAPE[1]} big-endian uint16, no header)"
            )
        raw = np.fromfile(path, dtype=">u2").reshape(JSRT_SHAPE).astype(np.uint16)
        raw = np.minimum(raw, JSRT_MAX_VALUE)
        return (JSRT_MAX_VALUE - raw).astype(np.uint16) if self.invert else raw

    def get_data(self, img: np.ndarray | list[np.ndarray]) -> tuple[np.ndarray, dict]:
        """Return the (x, y) array (channels first when several files) and its meta data."""
        arrays = [a.T for a in (img if isinstance(img, list) else [img])]  # (rows, cols) -> (x, y)
        meta: dict[str, Any] = {
            "spatial_shape": np.asarray(arrays[0].shape),
            "original_channel_dim": "no_channel" if len(arrays) == 1 else 0,
            "affine": np.eye(4),
            "original_affine": np.eye(4),
            "format": "JSRT raw",
            "jsrt_inverted": self.invert,
        }
        data = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=0)
        return data, meta


def reader_for(filename: os.PathLike | str) -> ImageReader:
    """Pick the reader for one file from its suffix.

    Args:
        filename: an image file (or a DICOM series folder).

    Returns:
        A reader instance.

    Raises:
        BundleInputError: no reader handles this suffix (the message names the file).
    """
    path = Path(filename)
    if _has_suffix(path, JSRT_SUFFIXES):
        return JsrtRawReader()
    if _has_suffix(path, PIL_SUFFIXES):
        return _PILReader(converter=pil_converter)
    if _has_suffix(path, NIFTI_SUFFIXES):
        return NibabelReader()
    if _has_suffix(path, DICOM_SUFFIXES) or path.is_dir() or not path.suffix:
        return PydicomReader()
    if HAS_ITK:
        from monai.data import ITKReader

        return ITKReader()
    raise BundleInputError(
        f"{path}: no reader for this file type; supported: {PIL_SUFFIXES + JSRT_SUFFIXES + NIFTI_SUFFIXES}"
        f" and DICOM{'' if HAS_ITK else ' (install itk for ' + ', '.join(ITK_SUFFIXES) + ')'}"
    )


@functools.lru_cache(maxsize=8)
def _loader(dtype: Any) -> LoadImage:
    # Building a LoadImage registers every default reader (slow, warns): build one per dtype.
    return LoadImage(image_only=True, dtype=dtype, ensure_channel_first=True)


def read_image(filename: os.PathLike | str, dtype: Any = None) -> MetaTensor:
    """Load one file as a channel-first MetaTensor; any failure names the file.

    Args:
        filename: the file to read.
        dtype: output dtype; ``None`` keeps the stored one (e.g. uint8 masks).

    Returns:
        A MetaTensor of shape (C, *spatial).

    Raises:
        BundleInputError: the file is missing, corrupt, truncated or not an image.
    """
    path = Path(filename)
    if not path.exists():
        raise MissingInputError(f"{path}: file not found")
    reader = reader_for(path)
    try:
        image = _loader(dtype)(str(path), reader=reader)
    except Exception as err:  # decoders (PIL, pydicom, nibabel, ITK) raise many types; name the file
        raise BundleInputError(f"{path}: {_decoder_failure(reader, err)}") from err
    if not isinstance(image, MetaTensor):  # set_track_meta(False) gives plain tensors
        image = MetaTensor(torch.as_tensor(image))
    return image


class LoadAnyImaged(LoadImaged):
    """MONAI's ``LoadImaged`` with this package's readers, chosen by file suffix.

    Given a reader list, ``LoadImage`` tries every reader in turn and logs each failure; with no
    list it picks by suffix among its defaults. Registering our readers on top of the defaults
    keeps the suffix choice (``.IMG`` to :class:`JsrtRawReader`, PNG/JPEG/GIF/TIFF to PIL through
    :func:`pil_converter`, NIfTI and DICOM to MONAI's own readers) without the noise.
    """

    def __init__(self, keys, **kwargs) -> None:
        kwargs.pop("reader", None)
        super().__init__(keys, reader=None, **kwargs)
        for reader in (_PILReader(converter=pil_converter), JsrtRawReader()):
            self.register(reader)

    def __call__(self, data, reader=None):
        try:
            return super().__call__(data, reader)
        except Exception as err:  # decoders (PIL, pydicom, nibabel, ITK) raise many types; name the file
            files = ", ".join(str(data[k]) for k in self.key_iterator(dict(data)))
            missing = [f for f in files.split(", ") if not os.path.exists(f)]
            if missing:
                raise MissingInputError(f"cannot read image {missing[0]}: file not found") from err
            raise BundleInputError(f"cannot read image {files}: {_decoder_failure(None, err)}") from err


def _decoder_failure(reader: ImageReader | None, err: BaseException) -> str:
    """One line on why a decoder failed, with what to do about it."""
    detail = " ".join(str(err).split())[:300] or type(err).__name__
    via = f" with {type(reader).__name__}" if reader is not None else ""
    return f"not a readable image{via} ({type(err).__name__}: {detail}); replace or remove the file"
