"""Tests for bundle.data.masks.LoadMaskd."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data.meta_tensor import MetaTensor
from monai.transforms import EnsureChannelFirstd, Flipd
from PIL import Image

from bundle.data import LoadAnyImaged, LoadMaskd


def _save(path: Path, array: np.ndarray, **kwargs) -> str:
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def _image(path: Path, shape: tuple[int, int] = (20, 30)) -> MetaTensor:
    """Write and load a grey PNG of (rows, cols) ``shape``; returns the channel-first MetaTensor."""
    _save(path, np.full(shape, 100, dtype=np.uint8))
    data = LoadAnyImaged("image")({"image": str(path)})
    return EnsureChannelFirstd("image")(data)["image"]


def _square(shape: tuple[int, int], value: int = 255) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[5:10, 10:20] = value
    return mask


def test_threshold_output_type_shape_and_meta(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    image.affine = torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0], dtype=torch.float64))
    mask = _save(tmp_path / "m.png", _square((20, 30)))
    out = LoadMaskd("label", threshold=127)({"image": image, "label": mask})["label"]
    assert isinstance(out, MetaTensor)
    assert out.shape == image.shape == (1, 30, 20)
    assert out.dtype == torch.int64
    np.testing.assert_array_equal(out[0].numpy(), (_square((20, 30)) > 0).T)
    assert torch.equal(out.affine, image.affine)
    assert out.meta["filename_or_obj"] == image.meta["filename_or_obj"]
    assert out.meta["mask_filenames"] == mask


def test_foreground_class(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    mask = _save(tmp_path / "m.png", _square((20, 30)))
    out = LoadMaskd("label", threshold=127, foreground_class=3)({"image": image, "label": mask})["label"]
    assert set(out.unique().tolist()) == {0, 3}


def test_value_map_accepts_json_string_keys(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    values = np.zeros((20, 30), dtype=np.uint8)
    values[0, :3] = [1, 2, 7]
    mask = _save(tmp_path / "m.png", values)
    out = LoadMaskd("label", value_map={"1": 1, "2": 2})({"image": image, "label": mask})["label"]
    assert out[0, :3, 0].tolist() == [1, 2, 0]  # 7 is not in the map -> background
    assert int(out.sum()) == 3


def test_merge_two_structures_takes_max_class(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    left = np.zeros((20, 30), dtype=np.uint8)
    left[:, 20:] = 255
    right = np.zeros((20, 30), dtype=np.uint8)
    right[:, :10] = 255
    paths = [_save(tmp_path / "left.png", left), _save(tmp_path / "right.png", right)]
    out = LoadMaskd("label", threshold=127)({"image": image, "label": paths})["label"]
    assert out.shape == (1, 30, 20)
    assert int(out.sum()) == 20 * 20
    assert out.meta["mask_filenames"] == "; ".join(paths)
    classes = LoadMaskd("label", value_map={255: 2})({"image": image, "label": paths})["label"]
    assert set(classes.unique().tolist()) == {0, 2}


def test_size_mismatch_names_both_files_and_the_fix(tmp_path: Path) -> None:
    image = _image(tmp_path / "case_img.png")
    mask = _save(tmp_path / "case_mask.png", np.zeros((40, 60), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"case_mask\.png.*case_img\.png.*resample=True") as err:
        LoadMaskd("label", threshold=127)({"image": image, "label": mask})
    assert "(60, 40)" in str(err.value) and "(30, 20)" in str(err.value)


def test_resample_to_image_grid_keeps_position(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    big = np.kron(_square((20, 30)), np.ones((2, 2), dtype=np.uint8))  # the same mask at twice the size
    mask = _save(tmp_path / "m.gif", big)
    out = LoadMaskd("label", threshold=127, resample=True)({"image": image, "label": mask})["label"]
    assert out.shape == (1, 30, 20)
    np.testing.assert_array_equal(out[0].numpy(), (_square((20, 30)) > 0).T)


def test_resample_refuses_other_aspect_ratio(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    mask = _save(tmp_path / "m.png", np.zeros((40, 40), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"m\.png.*img\.png.*aspect"):
        LoadMaskd("label", threshold=127, resample=True)({"image": image, "label": mask})


def test_jpeg_noise_is_not_foreground(tmp_path: Path) -> None:
    """Kvasir-SEG masks are JPEG: background noise of 1..20 must stay background with threshold 127."""
    rng = np.random.default_rng(0)
    image = _image(tmp_path / "img.png", (64, 64))
    noisy = rng.integers(1, 21, (64, 64, 3)).astype(np.uint8)
    noisy[20:40, 20:40] = 255
    mask = _save(tmp_path / "m.jpg", noisy, quality=95)
    stored = np.asarray(Image.open(mask))
    assert ((stored > 0) & (stored < 128)).sum() > 1000  # the file really carries noise
    out = LoadMaskd("label", threshold=127)({"image": image, "label": mask})["label"][0].numpy()
    assert out[:15, :].sum() == 0 and out[45:, :].sum() == 0
    assert out[22:38, 22:38].all()
    assert abs(int(out.sum()) - 400) < 40


def test_rgb_mask_reduced_by_channel_max(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    red = np.zeros((20, 30, 3), dtype=np.uint8)
    red[5:10, 10:20, 0] = 255  # drawn in red only
    mask = _save(tmp_path / "m.png", red)
    out = LoadMaskd("label", threshold=127)({"image": image, "label": mask})["label"]
    assert int(out.sum()) == 50


def test_volume_label_map(tmp_path: Path) -> None:
    volume = np.zeros((6, 5, 4), dtype=np.float32)
    labels = np.zeros((6, 5, 4), dtype=np.uint8)
    labels[1, 1, 1], labels[2, 2, 2], labels[3, 3, 3] = 1, 5, 42
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "seg.nii.gz")
    data = LoadAnyImaged("image")({"image": str(tmp_path / "ct.nii.gz")})
    data = EnsureChannelFirstd("image")(data)
    data["label"] = str(tmp_path / "seg.nii.gz")
    out = LoadMaskd("label", value_map={1: 1, 5: 2})(data)["label"]
    assert out.shape == (1, 6, 5, 4)
    assert (out[0, 1, 1, 1], out[0, 2, 2, 2], out[0, 3, 3, 3]) == (1, 2, 0)
    assert torch.equal(out.affine, data["image"].affine)


def test_unreadable_mask_names_file(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    bad = tmp_path / "broken_mask.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken_mask\.png"):
        LoadMaskd("label", threshold=127)({"image": image, "label": str(bad)})


def test_applied_operations_not_copied(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png", (20, 20))
    image = Flipd("image", spatial_axis=0)({"image": image})["image"]
    assert image.applied_operations
    mask = _save(tmp_path / "m.png", np.zeros((20, 20), dtype=np.uint8))
    out = LoadMaskd("label", threshold=127)({"image": image, "label": mask})["label"]
    assert out.applied_operations == []


def test_missing_key_and_argument_checks(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    assert "label" not in LoadMaskd("label", threshold=1, allow_missing_keys=True)({"image": image})
    with pytest.raises(KeyError):
        LoadMaskd("label", threshold=1)({"image": image})
    with pytest.raises(ValueError, match="exactly one"):
        LoadMaskd("label")
    with pytest.raises(ValueError, match="exactly one"):
        LoadMaskd("label", threshold=1, value_map={1: 1})


def test_zero_one_mask_is_a_label_map_not_empty(tmp_path: Path) -> None:
    """The bundle's own inference output (0/1 PNG) used as a training mask gives class 1, not nothing."""
    image = _image(tmp_path / "img.png")
    mask = _save(tmp_path / "m.png", _square((20, 30), value=1))
    out = LoadMaskd("label", threshold=127)({"image": image, "label": mask})["label"]
    assert int(out.sum()) == 50 and set(out.unique().tolist()) == {0, 1}


def test_label_map_within_num_classes_keeps_its_classes(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    values = _square((20, 30), value=2)
    values[0, :3] = 1
    mask = _save(tmp_path / "m.png", values)
    out = LoadMaskd("label", threshold=127, num_classes=2)({"image": image, "label": mask})["label"]
    assert set(out.unique().tolist()) == {0, 1, 2}
    # beyond C the values are intensities: binarised at the threshold
    binary = LoadMaskd("label", threshold=127, num_classes=1)({"image": image, "label": mask})["label"]
    assert int(binary.sum()) == 0


def test_jpeg_masks_are_always_thresholded(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.png")
    mask = _save(tmp_path / "m.jpg", _square((20, 30), value=1), quality=100)
    out = LoadMaskd("label", threshold=127)({"image": image, "label": mask})["label"]
    assert int(out.sum()) == 0


def test_all_empty_training_masks_are_refused_with_their_names(tmp_path: Path) -> None:
    from bundle.data.masks import check_training_labels
    from bundle.errors import BundleInputError

    empty = [{"label": _save(tmp_path / f"e{i}.png", np.zeros((8, 8), np.uint8))} for i in range(2)]
    with pytest.raises(BundleInputError, match=r"e0\.png, .*e1\.png.*--mask_threshold 127"):
        check_training_labels(empty, threshold=127)
    check_training_labels(empty + [{"label": _save(tmp_path / "f.png", _square((20, 30)))}], threshold=127)
