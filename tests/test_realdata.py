"""A short real-data run: JSRT 2-shot, seed 0, on the real release in ../shared/data.

Small enough for CI (a few minutes on 2 cores): 120 iterations, 5 validation images and the
first 20 cases of the paper's test split, scored at original resolution. The full protocol
(300 iterations, all 147 test cases) is what the README commands run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [str(ROOT / "configs" / f) for f in ("train.json", "datasets/jsrt.json")]
EVALUATE = [str(ROOT / "configs" / f) for f in ("train.json", "evaluate.json", "datasets/jsrt.json")]
TEST_CASES = 20


def _parser(configs: list[str], real_data: Path, tmp_path: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(
        {
            "bundle_root": str(ROOT),
            "dataset_dir": str(real_data / "jsrt"),
            "shots": 2,
            "seed": 0,
            "val_size": 5,
            "iterations": 120,
            "val_interval": 10,
            "ckpt_dir": str(tmp_path / "models"),
            "output_dir": str(tmp_path / "eval"),
            "embedding_cache_dir": str(tmp_path / "cache"),
            "validate#data": f"$@split.test[:{TEST_CASES}]",
            **overrides,
        }
    )
    parser.get_parsed_content("initialize")
    return parser


@pytest.mark.realdata
def test_jsrt_two_shot_beats_the_untrained_model(real_data, tmp_path):
    # the untrained model: LoRA at zero and the prompt still SAM's "no mask" embedding
    untrained = _parser(EVALUATE, real_data, tmp_path, **{"validate#handlers": []})
    split = untrained.get_parsed_content("split")
    assert len(split.test) == 147 and len(split.pool) == 100
    evaluator = untrained.get_parsed_content("validate#evaluator")
    evaluator.run()
    untrained_dice = evaluator.state.metrics["val_mean_dice"]

    # train: the held-out validation set picks the iteration whose weights are saved
    _parser(TRAIN, real_data, tmp_path).get_parsed_content("train#trainer").run()
    assert (tmp_path / "models" / "model.pt").is_file()

    # evaluate the saved model exactly as `run evaluating` does
    evaluator = _parser(EVALUATE, real_data, tmp_path).get_parsed_content("validate#evaluator")
    evaluator.run()
    trained_dice = evaluator.state.metrics["val_mean_dice"]
    print(
        f"JSRT 2-shot, 120 iterations, {TEST_CASES} test cases: Dice {trained_dice:.4f} "
        f"(untrained {untrained_dice:.4f})"
    )
    assert untrained_dice < 0.3
    assert trained_dice > 0.75
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 6
    assert (tmp_path / "eval" / "val_mean_dice_raw.csv").read_text().count("\n") == TEST_CASES + 1
