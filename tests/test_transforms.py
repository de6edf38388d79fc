"""Tests for bundle.transforms and for the preprocessing chains that configs/train.json builds."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Invertd
from PIL import Image

from bundle.networks.backbones import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from bundle.transforms import EnsureThreeChannelsd, SamIntensityd, sam_intensity

ROOT = Path(__file__).resolve().parents[1]
KVASIR = ROOT / "bundle" / "sample_data" / "kvasir"
SIZE = 256


def _meta_image(channels: int, h: int = 5, w: int = 7, seed: int = 0) -> MetaTensor:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (channels, h, w), generator=g).float()
    return MetaTensor(
        data,
        meta={"filename_or_obj": "case.png", "spatial_shape": (h, w)},
        applied_operations=[{"class": "Dummy", "id": 1}],
    )


# ---- EnsureThreeChannelsd ---------------------------------------------------------------------------------


def test_grey_becomes_three_identical_channels() -> None:
    img = _meta_image(1)
    out = EnsureThreeChannelsd("image")({"image": img})["image"]
    assert out.shape == (3, 5, 7)
    for c in range(3):
        assert torch.equal(out[c], img[0])


def test_rgba_drops_alpha() -> None:
    img = _meta_image(4)
    out = EnsureThreeChannelsd("image")({"image": img})["image"]
    assert out.shape == (3, 5, 7)
    assert torch.equal(out.as_tensor(), img[:3].as_tensor())


def test_grey_plus_alpha_gives_three_grey_channels() -> None:
    img = _meta_image(2)
    out = EnsureThreeChannelsd("image")({"image": img})["image"]
    assert out.shape == (3, 5, 7)
    for c in range(3):
        assert torch.equal(out[c].as_tensor(), img[0].as_tensor())


def test_rgb_is_unchanged() -> None:
    img = _meta_image(3)
    out = EnsureThreeChannelsd("image")({"image": img})["image"]
    assert torch.equal(out.as_tensor(), img.as_tensor())


def test_five_channels_refused() -> None:
    with pytest.raises(ValueError, match=r"1 to 4 channels.*\(5, 5, 7\)"):
        EnsureThreeChannelsd("image")({"image": _meta_image(5)})


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_three_channels_keeps_meta_and_applied_operations(channels: int) -> None:
    data = {"image": _meta_image(channels), "id": "case"}
    out = EnsureThreeChannelsd("image")(data)
    img = out["image"]
    assert isinstance(img, MetaTensor)
    assert img.meta["filename_or_obj"] == "case.png"
    assert [op["class"] for op in img.applied_operations] == ["Dummy"]
    assert out["id"] == "case"
    assert data["image"].shape[0] == channels  # the input dict is not modified in place


# ---- SamIntensityd ----------------------------------------------------------------------------------------


def test_litemedsam_minmax_per_image() -> None:
    a = torch.linspace(10, 60, 3 * 4 * 5).reshape(3, 4, 5)
    b = torch.linspace(-5, 1000, 3 * 4 * 5).reshape(3, 4, 5)
    t = SamIntensityd(["a", "b"], backbone="litemedsam")
    out = t({"a": a, "b": b})
    for key, src in (("a", a), ("b", b)):
        assert float(out[key].min()) == 0.0 and float(out[key].max()) == pytest.approx(1.0)
        torch.testing.assert_close(out[key], (src - src.min()) / (src.max() - src.min()))


def test_minmax_constant_image_is_finite() -> None:
    out = SamIntensityd("image", backbone="litemedsam")({"image": torch.full((3, 4, 4), 7.0)})["image"]
    assert torch.isfinite(out).all() and float(out.abs().max()) == 0.0


def test_vit_b_sam_normalisation_on_8bit_data() -> None:
    img = torch.randint(0, 256, (3, 6, 6), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    out = SamIntensityd("image", backbone="vit_b")({"image": img})["image"]
    assert out.dtype == torch.float32
    mean = torch.tensor(SAM_PIXEL_MEAN).reshape(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).reshape(3, 1, 1)
    torch.testing.assert_close(out, (img.float() - mean) / std)
    # a value of the mean maps to 0, per channel
    flat = torch.tensor(SAM_PIXEL_MEAN).reshape(3, 1, 1).expand(3, 2, 2).clone()
    torch.testing.assert_close(SamIntensityd("image", backbone="vit_b")({"image": flat})["image"], torch.zeros(3, 2, 2))


def test_vit_b_sixteen_bit_image_is_scaled_to_8bit_first() -> None:
    img16 = torch.tensor([0.0, 1000.0, 4095.0, 65535.0]).reshape(1, 2, 2).repeat(3, 1, 1)
    out = SamIntensityd("image", backbone="vit_b")({"image": img16})["image"]
    scaled = img16 / 65535.0 * 255.0
    mean = torch.tensor(SAM_PIXEL_MEAN).reshape(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).reshape(3, 1, 1)
    torch.testing.assert_close(out, (scaled - mean) / std)
    # the extremes land on SAM's 0 and 255
    torch.testing.assert_close(out[:, 0, 0], (0 - mean[:, 0, 0]) / std[:, 0, 0])
    torch.testing.assert_close(out[:, 1, 1], (255 - mean[:, 0, 0]) / std[:, 0, 0])


def test_intensity_keeps_meta() -> None:
    img = _meta_image(3)
    for backbone in ("litemedsam", "vit_b"):
        out = SamIntensityd("image", backbone=backbone)({"image": img})["image"]
        assert isinstance(out, MetaTensor)
        assert out.meta["filename_or_obj"] == "case.png"
        assert [op["class"] for op in out.applied_operations] == ["Dummy"]


def test_unknown_backbone_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'resnet'.*litemedsam.*vit_b"):
        SamIntensityd("image", backbone="resnet")


# ---- the configured preprocessing chains -------------------------------------------------------------------


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(KVASIR), **overrides})
    return parser


def _content_extent(size_wh: tuple[int, int]) -> tuple[int, int]:
    """The (axis 0, axis 1) extent of a (W, H) image at the model input: rows first (upright, see
    ``bundle.preprocessing``), longest side resized."""
    w, h = size_wh
    scale = SIZE / max(w, h)
    return round(h * scale), round(w * scale)


@pytest.fixture(scope="module")
def val_case():
    with warnings.catch_warnings():  # module-scoped: conftest's per-test filter is not active yet
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        parser = _parser()
        pre = parser.get_parsed_content("validate#preprocessing")
        item = parser.get_parsed_content("split").val[0]
        out = pre(dict(item))
    return pre, item, out


def test_validation_preprocessing_pads_at_the_end_and_keeps_aspect(val_case) -> None:
    _, item, out = val_case
    img = out["image"]
    assert img.shape == (3, SIZE, SIZE)
    w, h = Image.open(item["image"]).size
    assert w != h, "the sample case should not be square"
    ex0, ex1 = _content_extent((w, h))  # the model input is upright: axis 0 is y (rows)
    assert max(ex0, ex1) == SIZE and min(ex0, ex1) == round(SIZE * min(w, h) / max(w, h))
    # min-max backbone: content in the top-left, exact zeros in the padding
    assert min(ex0, ex1) < SIZE, "nothing was padded"
    assert float(img[:, ex0:, :].abs().sum()) == 0.0
    assert float(img[:, :, ex1:].abs().sum()) == 0.0
    content = img[:, :ex0, :ex1]
    assert float(content.std()) > 0.05
    assert float(content[:, -1, :].abs().sum()) > 0 and float(content[:, :, -1].abs().sum()) > 0
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 + 1e-5
    # the label stays at the original resolution (evaluation compares there)
    assert tuple(out["label"].shape[1:]) == (w, h)


def test_validation_preprocessing_inverts_to_the_original_size(val_case) -> None:
    pre, item, out = val_case
    img = out["image"]
    pred = MetaTensor(
        torch.cat([img[:1], img[:1]]).as_tensor(), meta=img.meta, applied_operations=img.applied_operations
    )
    inverter = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)
    inv = inverter({**out, "pred": pred})["pred"]
    w, h = Image.open(item["image"]).size
    assert inv.shape == (2, w, h)


def test_inverting_the_preprocessed_image_reproduces_the_original(val_case) -> None:
    pre, item, out = val_case
    inverter = Invertd(keys="image", transform=pre, orig_keys="image", nearest_interp=False)
    restored = inverter({**out})["image"]
    original = np.asarray(Image.open(item["image"]).convert("RGB"), dtype=np.float64)  # H x W x 3
    original = torch.from_numpy(original).permute(2, 1, 0)  # 3 x W x H, MONAI's PIL order
    original = (original - original.min()) / (original.max() - original.min())
    assert restored.shape == original.shape
    x = torch.as_tensor(restored, dtype=torch.float64).flatten()
    y = original.flatten()
    corr = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    assert corr > 0.95, corr
    assert float((x - y).abs().mean()) < 0.05


def _train_case(flip_prob: float) -> dict:
    parser = _parser(flip_prob=flip_prob)
    pre = parser.get_parsed_content("train#preprocessing")
    item = parser.get_parsed_content("split").lower[0]
    return item, pre(dict(item))


def test_train_preprocessing_shapes_and_binary_label() -> None:
    item, out = _train_case(0.0)
    img, label = out["image"], out["label"]
    assert img.shape == (3, SIZE, SIZE) and label.shape == (1, SIZE, SIZE)
    assert set(torch.unique(label).tolist()) == {0.0, 1.0}
    ex0, ex1 = _content_extent(Image.open(item["image"]).size)
    assert float(label[:, ex0:, :].sum()) == 0 and float(label[:, :, ex1:].sum()) == 0


def test_train_flips_keep_image_and_label_aligned() -> None:
    item, plain = _train_case(0.0)
    _, flipped = _train_case(1.0)
    ex0, ex1 = _content_extent(Image.open(item["image"]).size)
    for key in ("image", "label"):
        a = torch.as_tensor(plain[key])[:, :ex0, :ex1]
        b = torch.as_tensor(flipped[key])
        # flipping happens before the end-padding: content is flipped in place, padding stays at the end
        assert torch.equal(b[:, :ex0, :ex1], torch.flip(a, dims=(1, 2))), key
        assert float(b[:, ex0:, :].abs().sum()) == 0 and float(b[:, :, ex1:].abs().sum()) == 0
    assert set(torch.unique(torch.as_tensor(flipped["label"])).tolist()) == {0.0, 1.0}
    assert not torch.equal(torch.as_tensor(flipped["label"]), torch.as_tensor(plain["label"]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("mode", ["sam", "minmax"])
def test_sam_intensity_of_a_gpu_slice_stays_on_the_gpu(mode):
    """The slice-wise volume inferer normalises slices already on the network's device."""
    image = torch.rand(3, 8, 6, generator=torch.Generator().manual_seed(0)) * 300 - 20
    on_gpu = sam_intensity(image.cuda(), mode)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), sam_intensity(image, mode))
