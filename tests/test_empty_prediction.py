"""A training run that ends predicting nothing says so (bundle.handlers.EmptyPredictionWarning)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.utils import CommonKeys as Keys

from bundle.handlers import EmptyPredictionWarning

ROOT = Path(__file__).resolve().parents[1]


def _run(foreground_logit: float, capsys) -> tuple[EmptyPredictionWarning, str]:
    def step(engine, batch):
        pred = torch.zeros(2, 2, 8, 8)
        pred[:, 1] = foreground_logit  # class 1 wins where its logit beats the constant 0 of background
        label = torch.zeros(2, 1, 8, 8)
        label[:, :, 2:5, 2:5] = 1
        return {Keys.PRED: pred, Keys.LABEL: label}

    engine = Engine(step)
    handler = EmptyPredictionWarning(window=3)
    handler.attach(engine)
    engine.run([0] * 4, max_epochs=5)
    return handler, capsys.readouterr().out


def test_an_empty_model_is_reported_when_training_ends(capsys):
    handler, out = _run(-5.0, capsys)
    assert handler.message and "predicts no foreground on its labelled images in the last 3 iterations (of 20)" in out
    assert "Train longer" in out


def test_a_model_that_finds_the_structure_is_not_reported(capsys):
    handler, out = _run(5.0, capsys)
    assert handler.message is None and "warning" not in out


@pytest.mark.parametrize("config", ["train.json"])
def test_the_training_config_attaches_it_last(config):
    handlers = json.loads((ROOT / "configs" / config).read_text())["train"]["handlers"]
    assert handlers[-1]["_target_"] == "bundle.handlers.EmptyPredictionWarning"


def test_export_warns_when_the_measured_dice_is_zero(tmp_path, caplog):
    from bundle.export import measured_dice

    (tmp_path / "val_mean_dice_raw.csv").write_text("filename,class0,mean\na.png,0.0,0.0\nb.png,0.0,0.0\n")
    assert measured_dice(tmp_path)["test_mean_dice"] == 0.0
    assert "the model predicts (nearly) empty masks; train it longer" in caplog.text
