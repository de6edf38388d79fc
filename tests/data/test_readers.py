"""Tests for bundle.data.readers: palette handling, JSRT raw files, reader dispatch and error messages."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import EnsureChannelFirstd, LoadImaged
from PIL import Image

from bundle.data import JsrtRawReader, LoadAnyImaged, pil_converter, read_image
from bundle.data.readers import JSRT_FILE_BYTES


def _load(path: Path) -> torch.Tensor:
    """Load one file through LoadAnyImaged + EnsureChannelFirstd, as the configs do."""
    data = LoadAnyImaged("image")({"image": str(path)})
    return EnsureChannelFirstd("image")(data)["image"]


def _inverted_palette_png(path: Path, grey: np.ndarray) -> None:
    """Save ``grey`` as a palette PNG whose index i means grey 255 - i (as some JSRT copies are stored)."""
    image = Image.fromarray((255 - grey).astype(np.uint8), mode="L").convert("P")
    image.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    image.save(path)


# ---- pil_converter -------------------------------------------------------------------------------------


def test_converter_inverted_grey_palette_gives_grey_values(tmp_path: Path) -> None:
    grey = np.array([[0, 10, 200], [255, 128, 3]], dtype=np.uint8)
    path = tmp_path / "p.png"
    _inverted_palette_png(path, grey)
    raw = Image.open(path)
    assert raw.mode == "P"
    assert not np.array_equal(np.asarray(raw), grey)  # raw indices are the negative
    converted = pil_converter(raw)
    assert converted.mode == "L"
    np.testing.assert_array_equal(np.asarray(converted), grey)


def test_converter_colour_palette_gives_rgb() -> None:
    image = Image.new("P", (2, 2))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    converted = pil_converter(image)
    assert converted.mode == "RGB"
    assert converted.getpixel((0, 0)) == (255, 0, 0)
    assert converted.getpixel((1, 1)) == (0, 255, 0)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("RGBA", "RGB"), ("LA", "L"), ("1", "L"), ("CMYK", "RGB"), ("I;16", "I;16"), ("I", "I"), ("L", "L"),
     ("RGB", "RGB"), ("F", "F")],
)  # fmt: skip
def test_converter_modes(mode: str, expected: str) -> None:
    assert pil_converter(Image.new(mode, (3, 2))).mode == expected


def test_converter_bilevel_is_0_255() -> None:
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    np.testing.assert_array_equal(np.asarray(pil_converter(image)), [[0, 255]])


# ---- LoadAnyImaged on each kind of file -------------------------------------------


def test_palette_png_loads_as_grey_values(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = tmp_path / "p.png"
    _inverted_palette_png(path, grey)
    image = _load(path)
    assert image.shape == (1, 4, 3)  # PILReader convention: (x, y)
    np.testing.assert_array_equal(image[0].numpy(), grey.T)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".gif", ".tif", ".JPEG"])
def test_pil_formats_load(tmp_path: Path, suffix: str) -> None:
    grey = np.zeros((6, 10), dtype=np.uint8)
    grey[:, 5:] = 255
    path = tmp_path / f"a{suffix}"
    Image.fromarray(grey).save(path, format={".jpg": "JPEG", ".JPEG": "JPEG"}.get(suffix))
    image = _load(path)
    assert image.shape == (1, 10, 6)
    assert image[0, 0, 0] < 30 and image[0, 9, 0] > 225


def test_rgb_jpeg_is_channel_first(tmp_path: Path) -> None:
    path = tmp_path / "c.jpg"
    Image.new("RGB", (10, 6), (200, 30, 30)).save(path)
    image = _load(path)
    assert image.shape == (3, 10, 6)


def test_sixteen_bit_png_keeps_values(tmp_path: Path) -> None:
    data = np.array([[0, 4095], [1000, 65535]], dtype=np.uint16)
    path = tmp_path / "d.png"
    Image.fromarray(data).save(path)
    np.testing.assert_array_equal(_load(path)[0].numpy(), data.T)


def test_nifti_loads(tmp_path: Path) -> None:
    volume = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    image = _load(path)
    assert image.shape == (1, 2, 3, 4)
    np.testing.assert_array_equal(image[0].numpy(), volume)


def test_dicom_loads(tmp_path: Path) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    pixels = np.arange(24, dtype=np.uint16).reshape(4, 6)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "s.dcm"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing, ds.ImagePositionPatient = [1.0, 1.0], [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(path), write_like_original=False)
    image = _load(path)
    assert sorted(image.shape) == [1, 4, 6]
    assert float(image.max()) == 23


# ---- JSRT raw .IMG ---------------------------------------------------------------------------------------


def _jsrt_pattern() -> np.ndarray:
    """A 2048 x 2048 12-bit image (rows, cols) with distinct rows and columns so transposes show."""
    rows = np.arange(2048, dtype=np.uint16)[:, None]
    cols = np.arange(2048, dtype=np.uint16)[None, :]
    return ((rows + 2 * cols) % 4096).astype(np.uint16)


def test_jsrt_raw_round_trip_matches_png_convention(tmp_path: Path) -> None:
    stored = _jsrt_pattern()
    raw_path = tmp_path / "JPCLN001.IMG"
    stored.astype(">u2").tofile(raw_path)
    png_path = tmp_path / "JPCLN001.png"
    Image.fromarray(stored).save(png_path)

    plain = EnsureChannelFirstd("image")(
        LoadImaged("image", reader=JsrtRawReader(invert=False))({"image": str(raw_path)})
    )["image"]
    assert plain.shape == (1, 2048, 2048)
    # The raw image and a PNG of the same pixels must give the same array (same grid for the masks).
    np.testing.assert_array_equal(plain[0].numpy(), _load(png_path)[0].numpy())
    assert float(plain[0, 2, 1]) == stored[1, 2]  # axis 0 is the column (x), as with PILReader
    np.testing.assert_array_equal(plain.affine.numpy(), np.eye(4))

    inverted = _load(raw_path)  # LoadAnyImaged's JSRT reader: invert=True
    np.testing.assert_array_equal(inverted[0].numpy(), 4095 - plain[0].numpy())
    assert inverted.meta["jsrt_inverted"]


def test_jsrt_raw_wrong_size_names_file_and_size(tmp_path: Path) -> None:
    path = tmp_path / "bad.IMG"
    path.write_bytes(b"\0" * 1000)
    with pytest.raises(ValueError, match=rf"bad\.IMG.*{JSRT_FILE_BYTES}"):
        JsrtRawReader().read(path)
    with pytest.raises(ValueError, match=r"bad\.IMG"):
        read_image(path)
    with pytest.raises(Exception, match=r"bad\.IMG"):
        _load(path)


def test_jsrt_reader_suffix() -> None:
    reader = JsrtRawReader()
    assert reader.verify_suffix("a.IMG") and reader.verify_suffix("a.img")
    assert not reader.verify_suffix("a.png")


# ---- errors name the file --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["broken.png", "broken.jpg", "broken.nii.gz"])
def test_corrupt_file_error_names_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        read_image(path)
    with pytest.raises(Exception, match=name.replace(".", r"\.")):
        _load(path)


def test_truncated_png_error_names_it(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.png"):
        read_image(path)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        read_image(other)
    with pytest.raises(ValueError, match=r"absent\.png.*not found"):
        read_image(tmp_path / "absent.png")


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        _load(bad)
