"""The configs as a user runs them: what trains on what, and what selects the model."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from monai.handlers import CheckpointSaver

from bundle.engines import ExactHypergradient, FiniteDifferenceHypergradient, FirstOrderHypergradient

ROOT = Path(__file__).resolve().parents[1]


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(ROOT), **overrides})
    return parser


def _ids(items) -> set[str]:
    return {d["id"] for d in items}


def test_model_selection_uses_only_the_held_out_validation_set():
    parser = _parser(method="blo-sam")
    split = parser.get_parsed_content("split")
    lower, upper, val, test = (_ids(x) for x in (split.lower, split.upper, split.val, split.test))
    assert lower and upper and val and test
    assert lower.isdisjoint(upper) and val.isdisjoint(lower | upper | test)
    assert _ids(parser.get_parsed_content("validate#dataset").data) == val
    assert _ids(parser.get_parsed_content("train#lower_dataset").data) == lower
    assert _ids(parser.get_parsed_content("train#upper_dataset").data) == upper
    savers = [h for h in parser.get_parsed_content("validate#handlers") if isinstance(h, CheckpointSaver)]
    # the best model is picked by validation Dice, on the validation evaluator
    assert len(savers) == 1 and savers[0]._key_metric_checkpoint is not None


@pytest.mark.parametrize(
    ("name", "cls"),
    [("first", FirstOrderHypergradient), ("finite_difference", FiniteDifferenceHypergradient),
     ("exact", ExactHypergradient)],
)  # fmt: skip
def test_hypergradient_is_a_config_switch(name, cls):
    trainer_config = _parser(method="blo-sam", hypergradient=name, fd_radius=0.02)
    hypergradient = trainer_config.get_parsed_content("train#trainer#hypergradient")
    assert isinstance(hypergradient, cls)
    if name == "finite_difference":
        assert hypergradient.radius == 0.02


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(RuntimeError) as err:
        _parser(backbone="vit_q").get_parsed_content("input_size")
    assert "Unknown backbone 'vit_q'" in str(err.value.__cause__)


@pytest.mark.parametrize(
    ("method", "files", "overrides"),
    [("joint", (), {"method": "joint"}), ("decoder-only", (), {"method": "decoder-only"}),
     ("joint", ("methods/single_level.json",), {})],  # the file older command lines merge
)  # fmt: skip
def test_single_level_methods_train_on_d1_and_d2_with_the_same_images_per_iteration(method, files, overrides):
    from bundle.engines import SingleLevelTrainer

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / f) for f in ("train.json", *files)])
    parser.update({"bundle_root": str(ROOT), **overrides})
    split = parser.get_parsed_content("split")
    assert _ids(parser.get_parsed_content("train#lower_dataset").data) == _ids(split.lower) | _ids(split.upper)
    loader = parser.get_parsed_content("train#lower_dataloader")
    bilevel_batches = min(2, len(split.lower)) + min(2, len(split.upper))
    assert loader.batch_size == bilevel_batches and loader.sampler.size == len(split.lower) + len(split.upper)
    network = parser.get_parsed_content("network")
    optimised = {id(p) for group in parser.get_parsed_content("lower_optimizer").param_groups for p in group["params"]}
    assert {id(p) for p in network.lower_parameters()} <= optimised
    upper = {id(p) for p in network.upper_parameters()}
    assert upper and (upper <= optimised if method == "joint" else not upper & optimised)
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer, SingleLevelTrainer) and trainer.optimizer is parser.get_parsed_content("lower_optimizer")
    # only the scheduler of the optimiser it steps: an unused one would step before its optimiser
    schedulers = [h.lr_scheduler for h in parser.get_parsed_content("train#handlers") if hasattr(h, "lr_scheduler")]
    assert schedulers == [parser.get_parsed_content("lower_lr_scheduler")]


def test_blo_sam_method_trains_w_on_d1_and_the_prompt_on_d2():
    from bundle.engines import BiLevelTrainer

    parser = _parser(method="blo-sam")
    split = parser.get_parsed_content("split")
    assert _ids(parser.get_parsed_content("train#lower_dataset").data) == _ids(split.lower)
    assert parser.get_parsed_content("train#lower_dataloader").batch_size == min(2, len(split.lower))
    network = parser.get_parsed_content("network")
    lower = {id(p) for g in parser.get_parsed_content("lower_optimizer").param_groups for p in g["params"]}
    upper = {id(p) for g in parser.get_parsed_content("upper_optimizer").param_groups for p in g["params"]}
    assert lower == {id(p) for p in network.lower_parameters()} and upper == {id(p) for p in network.upper_parameters()}
    assert isinstance(parser.get_parsed_content("train#trainer"), BiLevelTrainer)
    schedulers = [h.lr_scheduler for h in parser.get_parsed_content("train#handlers") if hasattr(h, "lr_scheduler")]
    assert len(schedulers) == 2


def test_unknown_method_is_a_clear_error():
    with pytest.raises(RuntimeError) as err:
        _parser(method="maml").get_parsed_content("train#trainer")
    cause = err.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert "--method 'maml' is not a training method; choose one of blo-sam, joint, decoder-only" in str(cause)


@pytest.mark.parametrize("method", ["blo-sam", "joint"])
def test_zoo_config_ids_exist_and_train_dataset_data_drives_both_levels(method):
    """MONAI Label's trainer and the Model Zoo's checks set and read these ids."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(ROOT), "method": method})
    for key in (
        "dataset_dir",
        "train#dataset#data",
        "train#inferer",
        "validate#dataset#data",
        "validate#inferer",
        "run",
    ):
        assert key in parser, key
    split = parser.get_parsed_content("split")
    default = parser.get_parsed_content("train#dataset#data")
    assert _ids(default) == _ids(split.lower) | _ids(split.upper)
    assert [i["id"] for i in parser.get_parsed_content("train#halves")[0]] == [i["id"] for i in split.lower]
    # a tool that replaces the labelled list gets the bi-level split of its own list
    labelled = [dict(item) for item in split.pool[:3]]
    parser["train#dataset#data"] = labelled
    parser.parse()
    lower = parser.get_parsed_content("train#lower_dataset").data
    upper = parser.get_parsed_content("train#upper_dataset").data
    if method == "blo-sam":
        assert [i["id"] for i in lower] == [i["id"] for i in labelled[:2]]
    else:  # one level trains on the whole list
        assert [i["id"] for i in lower] == [i["id"] for i in labelled]
    assert [i["id"] for i in upper] == [labelled[2]["id"]]
    assert isinstance(
        parser.get_parsed_content("train#trainer").inferer, type(parser.get_parsed_content("train#inferer"))
    )
