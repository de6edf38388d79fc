"""The volumetric experiment's commands, test volumes and report, on synthetic run folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle.commands import merged_config
from bundle.experiments.volumes import (
    VARIANTS,
    VOLUME_DATASETS,
    VolumeRun,
    VolumeSettings,
    crop_to_structures,
    execute_volume_run,
    volume_commands,
    volume_report,
)


def _volumes(root: Path, n: int = 3) -> Path:
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for i in range(n):
        label = np.zeros((16, 16, 12), np.uint8)
        label[4:10, 4:12, 3:7] = 6  # liver
        label[10:13, 2:5, 5:8] = 1  # spleen
        label[3:5, 10:13, 6:8] = 3
        label[11:13, 11:13, 6:8] = 2
        image = (label * 20 - 50 + i).astype(np.int16)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"v{i}.nii.gz")
    return root


def test_commands_follow_the_command_line_contract(tmp_path):
    settings = VolumeSettings(tmp_path / "runs", {"btcv": "/data/btcv"}, 50, str(tmp_path / "emb"))
    commands = volume_commands(VolumeRun("btcv", 2, 1), settings, "/data/test")
    train = commands["training"]
    assert [Path(f).name for f in train["files"]] == ["train.json", "decathlon.json"]
    o = train["overrides"]
    assert o["structures"] == {"liver": 6, "spleen": 1, "left_kidney": 3, "right_kidney": 2}
    assert (o["modality"], o["shots"], o["test_size"], o["seed"], o["ct_window"]) == ("ct", 2, 20, 1, [75.0, 400.0])
    parsed = merged_config(train["files"], o)  # every override names a config id
    assert parsed["structures"] == o["structures"] and "volume_slicing" in parsed
    for name, constrained, tokens in (("pred", False, False), ("pred_size", True, False), ("pred_tokens", False, True)):
        c = commands[name]
        assert [Path(f).name for f in c["files"]] == ["inference.json", "volumes.json"]
        assert c["overrides"]["size_constraint"] is constrained and c["overrides"]["input_dir"] == "/data/test"
        assert c["overrides"]["token_prior"] is tokens
        # the token pass names its vote balance, so its record says which one it ran at (token_pass_scores)
        default = json.loads((Path(__file__).parents[2] / "configs/volumes.json").read_text())["token_prior_balance"]
        assert c["overrides"].get("token_prior_balance") == (default if tokens else None)
    # the bank the token prior reads is written by training, where volume inference looks for it
    from monai.bundle import ConfigParser

    written = {}
    for name, key in (("training", "token_bank_file"), ("pred_tokens", "token_prior_file")):
        parser = ConfigParser()
        parser.read_config(commands[name]["files"])
        parser.update(commands[name]["overrides"])
        written[name] = parser.get_parsed_content(key)
    ckpt_dir = Path(commands["training"]["overrides"]["ckpt_dir"])
    assert Path(written["training"]) == Path(written["pred_tokens"]) == ckpt_dir / "token_bank.pt"
    assert (
        volume_commands(VolumeRun("btcv", 2, 1, "blo-sam-2.5d"), settings, "x")["pred"]["overrides"]["slice_context"]
        == 1
    )
    flipped = volume_commands(VolumeRun("btcv", 2, 1, "blo-sam-flipped"), settings, "x")
    assert all(flipped[name]["overrides"]["slice_flip_vertical"] is True for name in flipped)
    dicece = volume_commands(VolumeRun("btcv", 2, 1, "blo-sam-dicece"), settings, "x")
    assert dicece["training"]["overrides"]["dice_present_only"] is False
    assert "dice_present_only" not in dicece["pred"]["overrides"]  # a training setting only
    assert merged_config(dicece["training"]["files"], dicece["training"]["overrides"])["dice_present_only"] is False
    for variant, key, value in (
        ("blo-sam-balanced", "slice_class_balance", True),
        ("joint", "method", "joint"),
        ("joint-augmented", "augmentation", "radiograph_lateral"),
        ("joint-augmented", "augmentation_bank", 4),
    ):
        c = volume_commands(VolumeRun("btcv", 2, 1, variant), settings, "x")
        assert c["training"]["overrides"][key] == value and key not in c["pred"]["overrides"]  # training only
        assert merged_config(c["training"]["files"], c["training"]["overrides"])[key] == value


def test_set_overrides_reach_the_segmenting_commands(tmp_path):
    """``--set prompt=dense`` trains a dense-prompt model: the segmenting commands must build the same model,
    or loading its checkpoint fails; training-only items stay out of them."""
    settings = VolumeSettings(
        tmp_path / "runs", {"btcv": "/data/btcv"}, 50, None, extra_overrides={"prompt": "dense", "augmentation_bank": 2}
    )
    commands = volume_commands(VolumeRun("btcv", 1, 0), settings, "x")
    assert commands["training"]["overrides"]["prompt"] == "dense"
    assert commands["training"]["overrides"]["augmentation_bank"] == 2
    for name in ("pred", "pred_size", "pred_tokens"):
        o = commands[name]["overrides"]
        assert o["prompt"] == "dense" and "augmentation_bank" not in o
        assert merged_config(commands[name]["files"], o)["prompt"] == "dense"
    balanced = VolumeSettings(
        tmp_path / "runs", {"btcv": "/data/btcv"}, 50, None, extra_overrides={"token_prior_balance": 1}
    )
    assert (
        volume_commands(VolumeRun("btcv", 1, 0), balanced, "x")["pred_tokens"]["overrides"]["token_prior_balance"] == 1
    )


def test_test_volumes_are_cut_to_the_structures_with_their_affine(tmp_path):
    data = _volumes(tmp_path / "data", n=1)
    item = {"image": str(data / "imagesTr/v0.nii.gz"), "label": str(data / "labelsTr/v0.nii.gz"), "id": "v0"}
    cut = crop_to_structures([item], tmp_path / "test", [6, 1, 3, 2], margin=1)[0]
    image, source = nib.load(cut["image"]), nib.load(item["image"])
    assert image.shape == (16, 16, 7)  # slices 3..7 hold structures, one more on each side: 2..8
    np.testing.assert_allclose(image.affine[:3, 3], source.affine[:3, 3] + [0, 0, 2 * 3.0])
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(source.dataobj)[:, :, 2:9])


def test_report_tables_and_figures_from_finished_runs(tmp_path):
    data = _volumes(tmp_path / "data", n=3)
    root = tmp_path / "runs"
    settings = VolumeSettings(root, {"btcv": str(data)}, 50)
    organs = list(VOLUME_DATASETS["btcv"].structures)
    runs = [VolumeRun("btcv", k, seed) for k in (1, 2) for seed in (0, 1)]
    from bundle.experiments.volumes import test_items

    items = test_items(VOLUME_DATASETS["btcv"], str(data), root)
    for run in runs[:3]:  # the last one is not finished
        folder = run.folder(root)
        (folder / "pred").mkdir(parents=True)
        label = nib.load(items[0]["label"])
        pred = np.zeros(label.shape, np.uint8)
        pred[np.asarray(label.dataobj) == 6] = 1
        nib.save(nib.Nifti1Image(pred, label.affine), folder / "pred" / f"{items[0]['id']}.nii.gz")
        dice = 0.5 + 0.1 * run.shots + 0.01 * run.seed
        for name, bonus in (("pred", 0.0), ("pred_size", 0.02), ("pred_tokens", 0.05))[: 3 if run.seed else 2]:
            scores = {"mean_dice": dict.fromkeys(organs, dice + bonus), "mean_dice_all": dice + bonus,
                      "mean_hd95_mm": dict.fromkeys(organs, 4.0)}  # fmt: skip
            (folder / f"{name}_scores.json").write_text(json.dumps(scores))
        if run.shots == 1:  # both k = 1 runs rescored later at balance 0.5 (seed 1's own token pass: balance 0)
            scores = {"mean_dice": dict.fromkeys(organs, dice + 0.08), "mean_dice_all": dice + 0.08,
                      "mean_hd95_mm": dict.fromkeys(organs, 3.0 + run.seed)}  # fmt: skip
            (folder / "pred_tokens_g0.5_scores.json").write_text(json.dumps(scores))
        record = {"run": run.__dict__, "test_volumes": 20, "training": {"seconds": 100.0, "peak_rss_mib": 900.0},
                  "pred": {"seconds": 200.0, "peak_rss_mib": 1200.0}}  # fmt: skip
        if run.shots == 2:  # a pass run in parts, one stopped before its end: no time per volume
            record["pred"]["parts_without_time"] = 1
        (folder / "done.json").write_text(json.dumps(record))
    text = volume_report(runs, settings, tmp_path / "volumes.md")
    assert (
        "| plain: mean | size constraint on: mean | token prior on, balance 0: mean | token prior on, balance 0.5 (default)"
        in text
    )
    assert (
        "| 1 | blo-sam | 2 | 60.5 ± 0.5 | 60.5 ± 0.5 | 60.5 ± 0.5 | 60.5 ± 0.5 | **60.5 ± 0.5** | 62.5 ± 0.5 | 66.0 (1 of 2 seeds) "
        "| 68.5 ± 0.5 |" in text
    )  # a token prior's column holds the runs that have its pass (seed 1) and says how many: runs made before
    # it have none
    assert "| 2 | blo-sam | 1 | 70.0 | 70.0 | 70.0 | 70.0 | **70.0** | 72.0 | – | – |" in text
    # the default balance organ by organ, HD95 in brackets; k = 2 has no pass at it, so no row there
    per_organ = text[text.index("With the token prior on (balance 0.5") : text.index("HD95 (mm), plain pass")]
    assert "| 1 | blo-sam | 2 | 68.5 ± 0.5 (3.5 ± 0.5) | 68.5 ± 0.5 (3.5 ± 0.5) |" in per_organ
    assert "\n| 2 | " not in per_organ
    assert "| 2 | blo-sam | 1 | 70.0 |" in text and "| AM-SAM | 87.3 | 87.1 | 84.4 | 86.0 | 86.2 |" in text
    assert "| 1 | 0 | blo-sam | 100 | 900 | 10.0 | 1200 |" in text  # 200 s over 20 test volumes
    assert "| 2 | 0 | blo-sam | 100 | 900 | – | 1200 |" in text
    for png in ("dice_vs_k_btcv.png", "planes_btcv.png"):
        assert (tmp_path / "volumes" / png).stat().st_size > 10_000
    # every variant the runner takes is described once, from the same record that holds its overrides
    for variant in VARIANTS.values():
        assert text.count(f"`{variant.name}` {variant.description}") == 1


def test_the_figure_shows_the_token_prior_only_where_every_seed_has_it():
    """Dice against k: the token prior's mean at a k is over all that k's runs or not drawn (the table then says
    "n of m seeds"); other variants' runs do not count."""
    from bundle.experiments.volumes import token_prior_by_k

    def run(k: int, seed: int, tokens: float | None, variant: str = "blo-sam", balance: float = 0.5) -> tuple:
        score = {} if tokens is None else {balance: {"mean_dice_all": tokens}}
        return VolumeRun("btcv", k, seed, variant), {}, {"mean_dice_all": 0.5}, {"mean_dice_all": 0.5}, score

    done = [run(1, 0, 0.8), run(1, 1, 0.9), run(2, 0, 0.85), run(2, 1, None), run(4, 0, None, "joint")]
    done.append(run(4, 1, 0.7, "joint"))
    assert token_prior_by_k(done, "blo-sam", 0.5) == {1: [80.0, 90.0]}  # k = 2 has one seed without the pass
    assert token_prior_by_k(done, "joint", 0.5) == {}  # one of its k = 4 runs has no token pass
    assert token_prior_by_k(done[:3], "blo-sam", 0.5) == {1: [80.0, 90.0], 2: [85.0]}
    assert token_prior_by_k(done[:3], "blo-sam", 0.0) == {}  # no run has a pass at that balance
    assert token_prior_by_k([run(1, 0, 0.8, balance=0.0), run(1, 1, 0.9)], "blo-sam", 0.5) == {}  # one seed lacks it


def test_token_pass_scores_are_keyed_by_the_balance_each_pass_ran_at(tmp_path):
    """A run's own token pass at the balance its command.json names (none before bundle 0.8: 0), and the later
    rescoring passes ``pred_tokens_g<gamma>`` at theirs."""
    from bundle.experiments.volumes import token_pass_scores

    assert token_pass_scores(tmp_path) == {}  # no token pass: a run made before the token prior
    (tmp_path / "pred_tokens_scores.json").write_text(json.dumps({"mean_dice_all": 0.7}))
    assert token_pass_scores(tmp_path) == {0.0: {"mean_dice_all": 0.7}}  # no command.json naming a balance
    command = {"pred_tokens": {"overrides": {"token_prior": True}}}
    (tmp_path / "command.json").write_text(json.dumps(command))
    assert list(token_pass_scores(tmp_path)) == [0.0]
    (tmp_path / "pred_tokens_g0.5_scores.json").write_text(json.dumps({"mean_dice_all": 0.8}))
    (tmp_path / "pred_tokens_g1_scores.json").write_text(json.dumps({"mean_dice_all": 0.9}))
    assert token_pass_scores(tmp_path) == {0.0: {"mean_dice_all": 0.7}, 0.5: {"mean_dice_all": 0.8},
                                           1.0: {"mean_dice_all": 0.9}}  # fmt: skip
    command["pred_tokens"]["overrides"]["token_prior_balance"] = 0.25
    (tmp_path / "command.json").write_text(json.dumps(command))
    assert list(token_pass_scores(tmp_path)) == [0.25, 0.5, 1.0]
    # another pass whose name starts alike is no rescoring
    (tmp_path / "pred_tokens_gated_scores.json").write_text(json.dumps({"mean_dice_all": 0.1}))
    assert list(token_pass_scores(tmp_path)) == [0.25, 0.5, 1.0]
    # a per-structure run: one command per structure, which must agree
    organs = {f"pred_tokens/{o}": {"overrides": {"token_prior_balance": 0.5}} for o in ("liver", "spleen")}
    (tmp_path / "pred_tokens_g0.5_scores.json").unlink()
    (tmp_path / "command.json").write_text(json.dumps(organs))
    assert token_pass_scores(tmp_path)[0.5] == {"mean_dice_all": 0.7}
    organs["pred_tokens/spleen"]["overrides"]["token_prior_balance"] = 1.0
    (tmp_path / "command.json").write_text(json.dumps(organs))
    with pytest.raises(ValueError, match="name different balances"):
        token_pass_scores(tmp_path)
    # a rescoring at the balance the run's own pass ran at: two passes claim one column
    (tmp_path / "command.json").write_text(json.dumps(command))
    (tmp_path / "pred_tokens_g0.25_scores.json").write_text(json.dumps({"mean_dice_all": 0.75}))
    with pytest.raises(ValueError, match="two token passes at balance 0.25"):
        token_pass_scores(tmp_path)


def test_development_volumes_come_from_the_support_pool_only(tmp_path):
    """``--eval_ids``: scoring on pool volumes (to choose settings) never touches the test split."""
    import dataclasses

    from bundle.experiments.volumes import test_items

    data = _volumes(tmp_path / "data", n=23)  # 3 pool volumes (sorted: v0, v1, v10) + the 20 test volumes
    btcv = VOLUME_DATASETS["btcv"]
    dev = test_items(btcv, str(data), tmp_path / "runs", eval_ids=("v1", "v10"))
    assert [item["id"] for item in dev] == ["v1", "v10"] and "/dev-" in dev[0]["image"]
    with pytest.raises(ValueError, match=r"support pool; not there: \['v9'\]"):
        test_items(btcv, str(data), tmp_path / "runs", eval_ids=("v1", "v9"))  # v9 sorts among the test ids
    whole = test_items(dataclasses.replace(btcv, crop_margin=None), str(data), tmp_path / "runs", eval_ids=("v0",))
    assert [item["id"] for item in whole] == ["v0"]
    assert [p.name for p in Path(whole[0]["image"]).parent.iterdir()] == ["v0.nii.gz"]  # its own folder


def test_whole_test_volumes_are_a_folder_of_exactly_the_test_split(tmp_path):
    """A data set without cutting (hippocampus) still gets a folder holding only its test volumes: the
    volume command segments a folder, and the data set's image folder holds the support pool too."""
    import dataclasses

    from bundle.experiments.volumes import test_items

    data = _volumes(tmp_path / "data", n=23)
    whole = dataclasses.replace(VOLUME_DATASETS["btcv"], crop_margin=None)
    items = test_items(whole, str(data), tmp_path / "runs")
    folder = Path(items[0]["image"]).parent
    assert len(items) == 20 and len(list(folder.iterdir())) == 20 and folder != data / "imagesTr"
    assert {i["id"] for i in items} == {p.name.removesuffix(".nii.gz") for p in folder.iterdir()}
    assert np.array_equal(
        nib.load(items[0]["label"]).get_fdata(), nib.load(data / "labelsTr" / "v11.nii.gz").get_fdata()
    )
    assert test_items(whole, str(data), tmp_path / "runs") == items  # a second call keeps the links


def test_a_development_volume_that_is_a_support_volume_is_refused(tmp_path):
    import re

    from bundle.experiments.volumes import execute_volume_run, support_ids

    data = _volumes(tmp_path / "data", n=23)
    run = VolumeRun("btcv", 1, 0)
    (support,) = support_ids(run, str(data))
    assert support in {"v0", "v1", "v10"}  # drawn from the pool, never the test split
    settings = VolumeSettings(tmp_path / "runs", {"btcv": str(data)}, 1, eval_ids=(support,))
    with pytest.raises(ValueError, match=re.escape(f"development volumes {[support]!r} are support volumes")):
        execute_volume_run(run, settings)


def test_one_model_per_structure_is_trained_and_scored_on_its_own_structure(tmp_path, monkeypatch):
    """``blo-sam-per-organ``: a binary model per structure, in its own sub-folder; each is scored on its
    structure only and the run's table (and costs) merge the four."""
    import bundle.commands

    data = _volumes(tmp_path / "data", n=21)
    settings = VolumeSettings(tmp_path / "runs", {"btcv": str(data)}, 1)
    run = VolumeRun("btcv", 1, 0, "blo-sam-per-organ")
    folder = run.folder(settings.root)
    commands = volume_commands(run, settings, "x")
    organs = VOLUME_DATASETS["btcv"].structures
    stages = ("training", "pred", "pred_size", "pred_tokens")
    assert list(commands) == [f"{stage}/{o}" for o in organs for stage in stages]
    for organ, value in organs.items():
        train = commands[f"training/{organ}"]["overrides"]
        assert train["structures"] == {organ: value} and "per_structure" not in train
        assert train["ckpt_dir"] == str(folder / organ / "models")
        assert commands[f"pred/{organ}"]["overrides"]["ckpt"] == str(folder / organ / "models" / "model.pt")
        assert commands[f"pred_tokens/{organ}"]["overrides"]["token_prior_balance"] == 0.5  # pinned per model
        assert merged_config(commands[f"training/{organ}"]["files"], train)["structures"] == {organ: value}

    def fake_bundle(args, cwd, log=None, usage=None):
        """Training writes nothing; every model 'segments' the liver as its class 1."""
        Path(usage).write_text("2048 3.0\n")
        if args[0] == "run" and args[1] != "training":
            out = Path(args[args.index("--output_dir") + 1])
            out.mkdir(parents=True, exist_ok=True)
            for label in Path(args[args.index("--input_dir") + 1]).parent.joinpath("labels").iterdir():
                ref = nib.load(label)
                pred = (np.asarray(ref.dataobj) == 6).astype(np.uint8)
                nib.save(nib.Nifti1Image(pred, ref.affine), out / label.name)
        return ""

    monkeypatch.setattr(bundle.commands, "run_bundle", fake_bundle)
    record = execute_volume_run(run, settings)
    scores = json.loads((folder / "pred_scores.json").read_text())
    assert scores["mean_dice"] == {"liver": 1.0, "spleen": 0.0, "left_kidney": 0.0, "right_kidney": 0.0}
    assert scores["mean_dice_all"] == 0.25 and len(scores["cases"]) == 20
    assert json.loads((folder / "liver" / "pred_scores.json").read_text())["structures"] == {"liver": 6}
    assert record["training"] == {"seconds": 12.0, "peak_rss_mib": 2.0}  # four models, summed; the peak
    assert record["pred"]["mean_dice"] == 0.25 and record["pred_size"]["seconds"] == 12.0
    assert record["pred_tokens"]["mean_dice"] == 0.25
