"""The validation metric exactly as configs/train.json builds it (``validate#key_metric``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.handlers import IgniteMetricHandler
from monai.metrics import DiceMetric

ROOT = Path(__file__).resolve().parents[1]
H = W = 16


def _handler() -> IgniteMetricHandler:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(ROOT)})
    handler = parser.get_parsed_content("validate#key_metric")["val_mean_dice"]
    assert isinstance(handler, IgniteMetricHandler)
    return handler


def _onehot(mask: torch.Tensor) -> torch.Tensor:
    """A B x H x W binary mask as B x 2 x H x W one-hot (what ``AsDiscreted(to_onehot=2)`` gives)."""
    mask = mask.float()
    return torch.stack([1 - mask, mask], dim=1)


def _dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    metric = _handler().metric_fn
    metric.reset()
    metric(y_pred=_onehot(pred), y=_onehot(label))
    return float(metric.aggregate())


def _empty() -> torch.Tensor:
    return torch.zeros(1, H, W)


def test_configured_metric_is_foreground_dice() -> None:
    metric = _handler().metric_fn
    assert isinstance(metric, DiceMetric)
    assert metric.include_background is False
    assert metric.ignore_empty is False


def test_both_empty_is_one() -> None:
    assert _dice(_empty(), _empty()) == 1.0


def test_false_positive_on_empty_ground_truth_is_zero() -> None:
    pred = _empty()
    pred[0, 3, 4] = 1
    assert _dice(pred, _empty()) == 0.0


def test_perfect_prediction_is_one() -> None:
    label = _empty()
    label[0, 2:9, 5:12] = 1
    assert _dice(label.clone(), label) == pytest.approx(1.0)


def test_partial_overlap_exact_value() -> None:
    label = _empty()
    label[0, 0:4, 0:4] = 1  # 16 pixels
    pred = _empty()
    pred[0, 2:6, 0:4] = 1  # 16 pixels, 8 shared
    assert _dice(pred, label) == pytest.approx(2 * 8 / (16 + 16))
    pred2 = _empty()
    pred2[0, 0:4, 0:2] = 1  # 8 pixels, all inside the label
    assert _dice(pred2, label) == pytest.approx(2 * 8 / (8 + 16))


def test_background_is_excluded() -> None:
    # one wrong pixel of foreground: background Dice is almost 1, foreground Dice is 0
    label = _empty()
    label[0, 5, 5] = 1
    pred = _empty()
    pred[0, 9, 9] = 1
    metric = _handler().metric_fn
    metric.reset()
    per_case = metric(y_pred=_onehot(pred), y=_onehot(label))
    assert per_case.shape == (1, 1)  # one column: the foreground class only
    assert float(metric.aggregate()) == 0.0
    with_bg = DiceMetric(include_background=True, ignore_empty=False, reduction="mean")
    with_bg(y_pred=_onehot(pred), y=_onehot(label))
    assert float(with_bg.aggregate()) > 0.45  # background would have pulled the mean up


def test_handler_averages_cases_over_an_epoch() -> None:
    """The handler reads decollated ``pred``/``label`` dicts as the SupervisedEvaluator outputs them."""
    label = _empty()
    label[0, 0:4, 0:4] = 1
    half = _empty()
    half[0, 2:6, 0:4] = 1
    cases = [(label, label), (half, label), (_empty(), _empty()), (half, _empty())]  # 1, 0.5, 1, 0

    def step(engine, batch):
        pred, lab = batch
        return [{"pred": _onehot(pred)[0], "label": _onehot(lab)[0]}]

    engine = Engine(step)
    _handler().attach(engine, "val_mean_dice")
    engine.run(cases, max_epochs=1)
    assert engine.state.metrics["val_mean_dice"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
