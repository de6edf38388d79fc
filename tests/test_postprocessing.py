"""Mask clean-up (MONAI's FillHoles, KeepLargestConnectedComponent, RemoveSmallObjects) and the
mask-quality metrics (enclosed holes, edges on the token grid)."""

from __future__ import annotations

import numpy as np
import torch

from bundle.metrics import EnclosedHolesMetric, TokenBorderEdgeMetric, enclosed_holes, token_border_edge_share
from bundle.postprocessing import CleanMaskd


def _lungs() -> torch.Tensor:
    m = torch.zeros(1, 64, 64)
    m[0, 10:50, 5:28] = 1  # two "lungs"
    m[0, 10:50, 36:60] = 1
    m[0, 20:24, 10:14] = 0  # a hole
    m[0, 58:60, 30:32] = 1  # a stray blob
    return m


def test_lung_preset_fills_holes_and_keeps_two_components():
    out = CleanMaskd("pred", num_classes=1, fill_holes=True, keep_components=2)({"pred": _lungs()})["pred"]
    assert out[0, 20:24, 10:14].min() == 1  # hole filled
    assert out[0, 58:60, 30:32].max() == 0  # blob removed
    assert out[0, 10:50, 36:60].min() == 1  # both lungs kept
    assert enclosed_holes(out[0].numpy() > 0) == 0


def test_min_size_is_a_fraction_of_the_image():
    out = CleanMaskd("pred", num_classes=1, min_size=0.002)({"pred": _lungs()})["pred"]  # 8 of 4096 pixels
    assert out[0, 58:60, 30:32].max() == 0 and out[0, 10:50, 5:28].sum() > 0
    same = CleanMaskd("pred", num_classes=1)({"pred": _lungs()})["pred"]
    assert torch.equal(same, _lungs())  # nothing asked, nothing changed


def test_min_relative_size_drops_blobs_beside_a_large_component_but_keeps_a_lone_small_one():
    from monai.data import MetaTensor

    pred = torch.zeros(1, 64, 64)
    pred[0, 10:40, 10:40] = 1  # 900 px
    pred[0, 50:56, 50:56] = 1  # 36 px: 4% of the largest
    pred[0, 2:8, 50:60] = 1  # 60 px: 6.7%
    clean = CleanMaskd("pred", num_classes=1, min_relative_size=0.05)
    out = clean({"pred": MetaTensor(pred, meta={"filename_or_obj": "case.png"})})["pred"]
    assert out[0, 50:56, 50:56].max() == 0  # below 5% of the largest: dropped
    assert out[0, 2:8, 50:60].min() == 1 and out[0, 10:40, 10:40].min() == 1
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case.png"
    lone = torch.zeros(1, 64, 64)
    lone[0, 50:53, 50:53] = 1  # a small polyp that is the only finding stays
    assert torch.equal(clean({"pred": lone})["pred"], lone)
    two = torch.zeros(1, 32, 32)
    two[0, 0:10, 0:10], two[0, 20:22, 20:22] = 1, 2  # each class is measured against its own largest part
    out = CleanMaskd("pred", num_classes=2, min_relative_size=0.5)({"pred": two})["pred"]
    assert torch.equal(out, two)


def test_enclosed_holes_ignores_background_open_to_the_border():
    assert enclosed_holes(_lungs()[0].numpy() > 0) == 1
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert enclosed_holes(ring) == 1
    ring[4, 2:5] = False  # the hole opens to the outside of the square, still inside the image
    assert enclosed_holes(ring) == 0


def test_token_border_share_of_a_blocky_and_a_smooth_mask():
    blocky = np.zeros((64, 64), bool)
    blocky[8:40, 16:48] = True  # edges on multiples of 8
    assert token_border_edge_share(blocky, pitch=8) == 1.0
    yy, xx = np.mgrid[:512, :512]
    disc = (yy - 251.3) ** 2 + (xx - 260.7) ** 2 < 150.0**2
    share = token_border_edge_share(disc, pitch=8)
    assert abs(share - 1 / 8) < 0.05  # chance level
    assert np.isnan(token_border_edge_share(np.zeros((8, 8), bool), pitch=8))


def test_metrics_take_one_hot_predictions_per_case():
    lungs = _lungs()
    onehot = torch.cat([1 - lungs, lungs])[None]  # 1 x 2 x H x W
    holes = EnclosedHolesMetric()
    holes(y_pred=onehot, y=onehot)
    assert holes.aggregate().item() == 1.0
    edges = TokenBorderEdgeMetric(grid=8)  # 64 px / 8 tokens: pitch 8
    edges(y_pred=onehot, y=onehot)
    assert 0.0 < edges.aggregate().item() <= 1.0


def test_argmaxd_gives_monais_argmax_ties_included_and_keeps_the_meta():
    import torch
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted

    from bundle.postprocessing import Argmaxd

    for shape in [(2, 40, 30), (4, 20, 20, 6)]:
        scores = torch.randn(*shape)
        scores[:, :3] = 0.0  # ties: the first class, as torch.argmax
        x = MetaTensor(scores, meta={"filename_or_obj": "case.png"})
        ours, monai = Argmaxd("pred")({"pred": x})["pred"], AsDiscreted("pred", argmax=True)({"pred": x})["pred"]
        assert ours.dtype == monai.dtype and ours.shape == (1, *shape[1:])
        torch.testing.assert_close(ours.as_tensor(), monai.as_tensor())
        assert ours.meta["filename_or_obj"] == "case.png"


def _probs(foreground: torch.Tensor):
    """2 x H x W probabilities (background, polyp) from the polyp's probability map."""
    from monai.data import MetaTensor

    return MetaTensor(torch.stack([1 - foreground, foreground]), meta={"filename_or_obj": "case.png"})


def test_unsure_components_go_to_the_next_class_and_a_sure_or_lone_one_stays():
    from bundle.postprocessing import Argmaxd, DropUnsureComponentsd

    p = torch.zeros(64, 64)
    p[10:30, 10:30] = 0.97  # the polyp: sure
    p[40:60, 40:60] = 0.70  # as large, mottled: 0.27 below the polyp
    p[2:6, 50:54] = 1.0  # 16 px, surer than the polyp but under min_size: cannot be the reference
    p[40:50, 2:12] = 0.88  # 0.09 below the polyp (within the margin), 0.12 below the tiny blob
    drop = DropUnsureComponentsd("pred", margin=0.1, min_size=0.005)  # 0.005 x 4096 = 20 px
    out = drop({"pred": _probs(p)})["pred"]
    labels = Argmaxd("pred")({"pred": out})["pred"][0]
    assert labels[10:30, 10:30].min() == 1 and labels[40:50, 2:12].min() == 1
    assert labels[40:60, 40:60].max() == 0  # given up: background is the next most likely class
    assert labels[2:6, 50:54].min() == 1  # left to the size clean-up, which drops it
    assert out.meta["filename_or_obj"] == "case.png" and torch.equal(out[0], _probs(p)[0])  # background kept
    lone = torch.zeros(64, 64)
    lone[40:60, 40:60] = 0.6  # an unsure lone finding has no surer one to lose to
    assert torch.equal(drop({"pred": _probs(lone)})["pred"], _probs(lone))
    off = DropUnsureComponentsd("pred", margin=0.0)({"pred": _probs(p)})["pred"]
    assert torch.equal(off, _probs(p))  # the default: nothing changes


def test_unsure_components_are_judged_per_class():
    from bundle.postprocessing import DropUnsureComponentsd

    probs = torch.full((3, 32, 32), 0.0)
    probs[0] = 1.0
    probs[:, 0:10, 0:10] = torch.tensor([0.05, 0.95, 0.0])[:, None, None]  # class 1, sure
    probs[:, 20:30, 20:30] = torch.tensor([0.35, 0.0, 0.65])[:, None, None]  # class 2's only component
    probs[:, 20:30, 0:10] = torch.tensor([0.25, 0.70, 0.05])[:, None, None]  # class 1, unsure
    out = DropUnsureComponentsd("pred", margin=0.1)({"pred": probs})["pred"]
    assert out[1, 20:30, 0:10].max() == 0 and out[2, 20:30, 20:30].min() == 0.65
    assert out.argmax(0)[20:30, 0:10].max() == 0


def test_confidence_margin_is_checked():
    import pytest

    from bundle.postprocessing import DropUnsureComponentsd

    with pytest.raises(ValueError, match="postprocess_confidence_margin"):
        DropUnsureComponentsd("pred", margin=1.5)


def test_unsure_components_are_dropped_before_the_argmax_in_evaluation_inference_and_not_for_a_box():
    from pathlib import Path

    from monai.bundle import ConfigParser
    from monai.transforms import AsDiscreted

    from bundle.postprocessing import Argmaxd, DropUnsureComponentsd

    configs = Path(__file__).resolve().parents[1] / "configs"
    pipelines = {
        ("train.json", "datasets/kvasir.json"): ("validate#postprocessing", 0.2),  # the preset's evaluation
        ("inference.json",): ("postprocessing", 0.0),  # off unless the task sets it
        ("inference.json", "interactive.json"): ("postprocessing", 0.0),  # a user's box: never
    }
    for files, (pipeline, margin) in pipelines.items():
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        parser.update({"bundle_root": str(configs.parent)})
        if files[-1] == "interactive.json":
            parser["postprocess_confidence_margin"] = 0.3  # what a task exported from a preset may carry
        transforms = parser.get_parsed_content(pipeline).transforms
        kinds = [type(t) for t in transforms]
        drop = transforms[kinds.index(DropUnsureComponentsd)]
        argmax = Argmaxd if Argmaxd in kinds else AsDiscreted
        assert kinds.index(DropUnsureComponentsd) == kinds.index(argmax) - 1, files
        assert drop.margin == margin and drop.min_size == parser["postprocess_min_size"], files
