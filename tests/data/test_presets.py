"""Tests for the data set presets, the shipped sample data and (when present) the real data sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd
from PIL import Image

import bundle
from bundle.data import LoadAnyImaged, LoadMaskd, dental_datalist, jsrt_datalist, kvasir_datalist, paper_split

SAMPLE_DATA = Path(bundle.__file__).resolve().parent / "sample_data"


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def _load_case(item: dict, **mask_args) -> dict:
    return Compose([LoadAnyImaged("image"), EnsureChannelFirstd("image"), LoadMaskd("label", **mask_args)])(item)


# ---- presets on synthetic layouts ------------------------------------------------------------------------


def test_kvasir_layout(tmp_path: Path) -> None:
    _touch(tmp_path / "images", "b.jpg", "a.jpg")
    _touch(tmp_path / "masks", "a.jpg", "b.jpg")
    (tmp_path / "kavsir_bboxes.json").write_text("{}")
    items = kvasir_datalist(tmp_path)
    assert [i["id"] for i in items] == ["a", "b"]
    assert items[0]["label"] == str(tmp_path / "masks" / "a.jpg")


@pytest.mark.parametrize(("left", "right"), [("left_lung", "right_lung"), ("left lung", "right lung")])
def test_jsrt_folder_spellings(tmp_path: Path, left: str, right: str) -> None:
    _touch(tmp_path / "images", "JPCLN002.png", "JPCLN001.png")
    _touch(tmp_path / "masks" / left, "JPCLN001.gif", "JPCLN002.gif")
    _touch(tmp_path / "masks" / right, "JPCLN001.gif", "JPCLN002.gif")
    _touch(tmp_path / "masks" / "heart", "JPCLN001.gif")  # other SCR structures are ignored
    items = jsrt_datalist(tmp_path)
    assert [i["id"] for i in items] == ["JPCLN001", "JPCLN002"]
    assert items[0]["label"] == [
        str(tmp_path / "masks" / left / "JPCLN001.gif"),
        str(tmp_path / "masks" / right / "JPCLN001.gif"),
    ]


def test_jsrt_both_spellings_is_ambiguous(tmp_path: Path) -> None:
    for folder in ("left_lung", "left lung", "right_lung"):
        _touch(tmp_path / "masks" / folder, "JPCLN001.gif")
    _touch(tmp_path / "images", "JPCLN001.png")
    with pytest.raises(FileNotFoundError, match="several"):
        jsrt_datalist(tmp_path)


def test_jsrt_raw_img_case_loads_with_resampled_masks(tmp_path: Path) -> None:
    """A released 2048 x 2048 .IMG image with 1024 x 1024 SCR masks loads onto one grid."""
    (tmp_path / "images").mkdir()
    rows = np.zeros((2048, 2048), dtype=np.uint16)
    rows.astype(">u2").tofile(tmp_path / "images" / "JPCNN001.IMG")
    left = np.zeros((1024, 1024), dtype=np.uint8)
    left[200:800, 600:900] = 255  # patient's left lung: right side of the image
    right = np.zeros((1024, 1024), dtype=np.uint8)
    right[200:800, 100:400] = 255
    for folder, mask in (("left lung", left), ("right lung", right)):
        (tmp_path / "masks" / folder).mkdir(parents=True)
        Image.fromarray(mask).save(tmp_path / "masks" / folder / "JPCNN001.gif")
    items = jsrt_datalist(tmp_path)
    assert items[0]["image"].endswith("JPCNN001.IMG")
    case = _load_case(items[0], threshold=127, resample=True)
    assert case["image"].shape == case["label"].shape == (1, 2048, 2048)
    assert float(case["image"].max()) == 4095  # raw 0 inverted
    label = case["label"][0]
    assert label[1200:1800, 400:1600].all() and label[200:800, 400:1600].all()
    assert int(label.sum()) == 2 * (600 * 300) * 4  # two lungs, 2x upsampled


def test_dental_split_folders(tmp_path: Path) -> None:
    for split, ids in (("train", ["p1", "p2"]), ("test", ["p3"])):
        _touch(tmp_path / split / "images", *[f"{i}.png" for i in ids])
        _touch(tmp_path / split / "masks", *[f"{i}.png" for i in ids])
    assert [i["id"] for i in dental_datalist(tmp_path)] == ["p1", "p2"]
    assert [i["id"] for i in dental_datalist(tmp_path, split="test")] == ["p3"]


def test_dental_split_file_custom_names(tmp_path: Path) -> None:
    _touch(tmp_path / "Images", "p1.png", "p2.png", "p3.png")
    _touch(tmp_path / "Teeth masks", "p1_mask.png", "p2_mask.png", "p3_mask.png")
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["p1", "p3"], "test": ["p2"]}))
    items = dental_datalist(
        tmp_path,
        split="train",
        image_dir="Images",
        mask_dir="Teeth masks",
        mask_glob="*_mask.png",
        mask_suffix="_mask",
        split_file=split_file,
    )
    assert [(i["id"], Path(i["label"]).name) for i in items] == [("p1", "p1_mask.png"), ("p3", "p3_mask.png")]


def test_dental_masks_load_with_value_map(tmp_path: Path) -> None:
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir(parents=True)
    Image.fromarray(np.full((30, 60), 90, dtype=np.uint8)).save(tmp_path / "train" / "images" / "p1.png")
    teeth = np.zeros((30, 60), dtype=np.uint8)
    teeth[10:20, 5:25] = 255
    Image.fromarray(teeth).save(tmp_path / "train" / "masks" / "p1.png")
    case = _load_case(dental_datalist(tmp_path)[0], value_map={"255": 1})
    assert case["label"].shape == (1, 60, 30)
    assert int(case["label"].sum()) == 200


@pytest.mark.parametrize("preset", [kvasir_datalist, jsrt_datalist, dental_datalist])
def test_presets_missing_or_empty_dataset(tmp_path: Path, preset) -> None:
    with pytest.raises(FileNotFoundError, match="absent"):
        preset(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")
    with pytest.raises(ValueError, match="empty data set"):
        preset(tmp_path / "empty")


# ---- shipped sample --------------------------------------------------------------------------------------


def test_shipped_kvasir_sample_loads() -> None:
    items = kvasir_datalist(SAMPLE_DATA / "kvasir")
    assert len(items) == 16
    for item in items:
        case = _load_case(item, threshold=127)
        assert case["image"].shape[0] == 3 and max(case["image"].shape[1:]) == 320
        assert case["label"].shape[1:] == case["image"].shape[1:]
        assert case["label"].sum() > 0, item["id"]


def test_shipped_jsrt_sample_loads() -> None:
    items = jsrt_datalist(SAMPLE_DATA / "jsrt")
    assert len(items) == 16
    for item in items:
        case = _load_case(item, threshold=127, resample=True)
        assert case["image"].shape == case["label"].shape == (1, 256, 256)
        assert case["label"][0, :128].sum() > 0 and case["label"][0, 128:].sum() > 0, item["id"]


# ---- real data sets (development machines only) ---------------------------------------------------------


@pytest.mark.realdata
def test_real_kvasir(real_data: Path) -> None:
    items = kvasir_datalist(real_data / "kvasir-seg")
    assert len(items) == 1000
    pool, test = paper_split(items, 500)
    assert (len(pool), len(test)) == (500, 500)
    assert pool[-1]["id"] < test[0]["id"]


@pytest.mark.realdata
def test_real_jsrt(real_data: Path) -> None:
    items = jsrt_datalist(real_data / "jsrt")
    assert len(items) == 247
    pool, test = paper_split(items, 147)
    assert (len(pool), len(test)) == (100, 147)


@pytest.mark.realdata
def test_real_jsrt_case_loads_on_one_grid(real_data: Path) -> None:
    item = jsrt_datalist(real_data / "jsrt")[0]
    case = _load_case(item, threshold=127, resample=True)
    image, label = case["image"], case["label"]
    assert label.shape == image.shape
    width = label.shape[1]
    assert label[0, : width // 2].sum() > 0 and label[0, width // 2 :].sum() > 0
    # The patient's left lung lies on the right of the image: axis 0 of the array is x.
    load_left = LoadMaskd("label", threshold=127, resample=True)
    left = load_left({"image": image, "label": item["label"][0]})["label"]
    assert torch.nonzero(left[0])[:, 0].float().mean() > width / 2
    # Lungs are darker than the rest of the radiograph (the PNG is not a negative).
    assert image[label > 0].mean() < image[label == 0].mean()


# ---- data-set override configs merged after configs/train.json ------------------------------------------

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SUBSETS = ("lower", "upper", "val", "test", "pool")


def _merged_parser(dataset: str, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "datasets" / f"{dataset}.json")])
    parser.update({"bundle_root": str(CONFIGS.parent), **overrides})
    return parser


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_dental(root: Path, train_ids: list[str], test_ids: list[str]) -> None:
    rng = np.random.default_rng(0)
    for split, ids in (("train", train_ids), ("test", test_ids)):
        for case in ids:
            image = rng.integers(0, 256, (12, 16), dtype=np.uint8)
            _write_png(root / split / "images" / f"{case}.png", image)
            mask = np.zeros((12, 16), dtype=np.uint8)
            mask[3:8, 4:10] = 255
            _write_png(root / split / "masks" / f"{case}.png", mask)


def test_dental_config_splits_train_folder_and_tests_on_test_folder(tmp_path: Path) -> None:
    train_ids = [f"tr{i:02d}" for i in range(4)]  # exactly the preset's k = 4: no other labels needed
    test_ids = ["te0", "te1", "te2"]
    _write_dental(tmp_path, train_ids, test_ids)
    parser = _merged_parser("dental", dataset_dir=str(tmp_path))
    assert parser.get_parsed_content("class_names") == ["tooth"]
    assert parser.get_parsed_content("num_classes") == 1
    split = parser.get_parsed_content("split")
    ids = {name: [i["id"] for i in getattr(split, name)] for name in SUBSETS}
    assert ids["test"] == test_ids
    assert ids["pool"] == train_ids
    assert (len(ids["lower"]), len(ids["upper"]), len(ids["val"])) == (2, 2, 0)
    assert set(ids["lower"] + ids["upper"]) == set(train_ids)
    assert all(Path(i["image"]).parent == tmp_path / "test" / "images" for i in split.test)
    assert all(Path(i["label"]).parent == tmp_path / "train" / "masks" for i in split.lower + split.upper)
    # the k + validation option draws its validation images from the train folder only
    more = [f"tr{i:02d}" for i in range(14)]
    _write_dental(tmp_path, more, test_ids)
    small = _merged_parser("dental", dataset_dir=str(tmp_path), val_size=10).get_parsed_content("split")
    assert len(small.val) == 10 and {i["id"] for i in small.val} <= set(more)
    assert [i["id"] for i in small.test] == test_ids


@pytest.mark.parametrize(
    ("dataset", "preset", "class_names", "resample"),
    [("kvasir", kvasir_datalist, ["polyp"], False), ("jsrt", jsrt_datalist, ["lung"], True)],
)
def test_dataset_configs_resolve_their_presets(dataset: str, preset, class_names, resample: bool) -> None:
    root = SAMPLE_DATA / dataset
    parser = _merged_parser(dataset, dataset_dir=str(root), test_size=6, val_size=4)
    assert parser.get_parsed_content("datalist") == preset(root)
    assert parser.get_parsed_content("class_names") == class_names
    assert parser.get_parsed_content("mask_resample") is resample
    split = parser.get_parsed_content("split")
    shots = parser.get_parsed_content("shots")
    assert len(split.test) == 6 and len(split.pool) == 10 and len(split.val) == 4
    assert len(split.lower) + len(split.upper) == shots
    assert [i["id"] for i in split.test] == [i["id"] for i in preset(root)[-6:]]
