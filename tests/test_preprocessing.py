"""The shared data path shows the network upright images and maps predictions back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, Invertd
from PIL import Image

from bundle.preprocessing import model_input_transforms

HEIGHT, WIDTH, SIZE = 40, 60, 64  # non-square, wider than tall


@pytest.fixture
def asymmetric_png(tmp_path):
    """A W x H = 60 x 40 grey picture: a bright bar along the top-left, a dim square bottom-right."""
    pixels = np.zeros((HEIGHT, WIDTH), np.uint8)  # rows first, as PIL/numpy show a picture
    pixels[0:8, 0:30] = 255
    pixels[30:40, 50:60] = 100
    image, mask = tmp_path / "case.png", tmp_path / "case_mask.png"
    Image.fromarray(pixels).save(image)
    Image.fromarray(((pixels == 255) * 255).astype(np.uint8)).save(mask)
    return image, mask, pixels


def test_encoder_input_is_the_upright_picture(asymmetric_png):
    image, mask, pixels = asymmetric_png
    chain = Compose(model_input_transforms("litemedsam", SIZE, with_label=True, resize_label=True))
    out = chain({"image": str(image), "label": str(mask)})
    x, y = out["image"], out["label"]
    assert tuple(x.shape) == (3, SIZE, SIZE)
    rows = round(HEIGHT * SIZE / WIDTH)  # 43 rows of picture, then padding at the bottom
    expected = torch.nn.functional.interpolate(
        torch.tensor(pixels / 255.0, dtype=torch.float32)[None, None], size=(rows, SIZE), mode="bilinear",
        antialias=True, align_corners=False,
    )[0, 0]  # fmt: skip
    # rows first: the bright bar is at the top left of the encoder input, the padding below the picture
    assert x[0, :4, :28].min() > 0.9 and x[0, :4, 36:].max() < 0.05
    assert torch.all(x[:, rows:, :] == 0)
    assert torch.allclose(x[0, :rows], expected, atol=0.08)  # min-max 0..1 of a 0..255 picture
    # the label went through the same geometry
    assert y[0, :4, :28].min() == 1 and y[0, rows:].max() == 0 and y[0, :, 36:].max() == 0


def test_inverted_prediction_lands_on_the_file_grid(asymmetric_png):
    image, _, pixels = asymmetric_png
    chain = Compose(model_input_transforms("litemedsam", SIZE))
    out = chain({"image": str(image)})
    # a "prediction" that marks the bright bar in model-input space
    out["pred"] = (out["image"][:1] > 0.5).float()
    back = Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=True)(out)["pred"]
    # MONAI's writers expect the reader's (x, y) layout: the inverse restores it (up to the edge
    # pixels a resize round trip moves); a transposed or flipped result would miss most of the bar
    assert tuple(back.shape) == (1, WIDTH, HEIGHT)
    picture = back[0].T.bool()
    truth = torch.from_numpy(pixels == 255)
    assert (picture != truth).float().mean() < 0.02
    assert (picture & truth).sum() / truth.sum() > 0.9


def test_a_large_image_is_shrunk_first_and_mapped_back(tmp_path):
    """Longer side than LARGE_SIDE: shrunk to the model input as soon as read; Invertd restores the size;
    images up to LARGE_SIDE carry no record of it (their path is unchanged)."""
    from bundle.preprocessing import LARGE_SIDE

    height, width = 60, LARGE_SIDE + 104
    pixels = np.zeros((height, width), np.uint8)
    pixels[:, : width // 2] = 255  # bright left half
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    chain = Compose(model_input_transforms("litemedsam", SIZE, nonfinite="min"))
    out = chain({"image": str(tmp_path / "wide.png")})
    assert tuple(out["image"].shape) == (3, SIZE, SIZE)
    assert [op["class"] for op in out["image"].applied_operations] == ["Resize", "Transposed", "Resize", "SpatialPad"]
    out["pred"] = (out["image"][:1] > 0.5).float()
    back = Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=False)(out)["pred"]
    assert tuple(back.shape) == (1, width, height)
    picture = back[0].T > 0.5
    assert (picture != torch.from_numpy(pixels == 255)).float().mean() < 0.02
    Image.fromarray(pixels[:, :LARGE_SIDE]).save(tmp_path / "limit.png")
    ops = chain({"image": str(tmp_path / "limit.png")})["image"].applied_operations
    assert [op["class"] for op in ops] == ["Transposed", "Resize", "SpatialPad"]
