"""Tests for bundle.data.folder.folder_datalist, the generic image-folder + mask-folder reader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bundle.data import folder_datalist
from bundle.data.folder import image_stem, read_split_ids


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_image_stem() -> None:
    assert image_stem("case1.nii.gz") == "case1"
    assert image_stem("a.png") == "a"
    assert image_stem("JPCLN001.IMG") == "JPCLN001"
    assert image_stem("x.y.JPG") == "x.y"
    assert image_stem("notes.txt") is None
    assert image_stem(".png") is None


def test_matches_by_stem_sorted_by_id(tmp_path: Path) -> None:
    # Created in reverse order: the result must not follow the directory listing.
    _touch(tmp_path / "img", "c.png", "b.png", "a.png")
    _touch(tmp_path / "msk", "c.gif", "a.gif", "b.gif")
    items = folder_datalist(tmp_path / "img", tmp_path / "msk")
    assert [i["id"] for i in items] == ["a", "b", "c"]
    assert items[0] == {"image": str(tmp_path / "img" / "a.png"), "label": str(tmp_path / "msk" / "a.gif"), "id": "a"}


def test_several_mask_folders_give_label_lists(tmp_path: Path) -> None:
    _touch(tmp_path / "img", "a.nii.gz", "b.nii.gz")
    _touch(tmp_path / "left", "a.nii.gz", "b.nii.gz")
    _touch(tmp_path / "right", "a.nii.gz", "b.nii.gz")
    items = folder_datalist(tmp_path / "img", [tmp_path / "left", tmp_path / "right"])
    assert items[1]["label"] == [str(tmp_path / "left" / "b.nii.gz"), str(tmp_path / "right" / "b.nii.gz")]


def test_mask_suffix_and_glob(tmp_path: Path) -> None:
    _touch(tmp_path / "img", "a.png", "b.png")
    _touch(tmp_path / "msk", "a_mask.png", "b_mask.png", "a_overlay.png")
    items = folder_datalist(tmp_path / "img", tmp_path / "msk", mask_glob="*_mask.png", mask_suffix="_mask")
    assert [(i["id"], Path(i["label"]).name) for i in items] == [("a", "a_mask.png"), ("b", "b_mask.png")]


def test_ignores_hidden_and_non_image_files_and_accepts_any_case(tmp_path: Path) -> None:
    _touch(tmp_path / "img", "a.PNG", ".b.png", "notes.txt", "c.Tiff")
    _touch(tmp_path / "msk", "a.png", "c.png", "readme.md")
    (tmp_path / "img" / "sub.png").mkdir()  # a folder with an image-like name is no file
    assert [i["id"] for i in folder_datalist(tmp_path / "img", tmp_path / "msk")] == ["a", "c"]


def test_missing_folder(tmp_path: Path) -> None:
    _touch(tmp_path / "img", "a.png")
    with pytest.raises(FileNotFoundError, match="nope"):
        folder_datalist(tmp_path / "nope", tmp_path / "img")
    with pytest.raises(FileNotFoundError, match="masks_missing"):
        folder_datalist(tmp_path / "img", tmp_path / "masks_missing")


def test_no_image_matched_names_glob_and_folder(tmp_path: Path) -> None:
    _touch(tmp_path / "img", "a.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"'\*'.*empty"):
        folder_datalist(tmp_path / "empty", tmp_path / "img")
    with pytest.raises(ValueError, match=r"'\*\.jpg'.*img"):
        folder_datalist(tmp_path / "img", tmp_path / "img", image_glob="*.jpg")


def test_image_without_mask_lists_at_most_five_ids(tmp_path: Path) -> None:
    _touch(tmp_path / "img", *[f"{i:02d}.png" for i in range(8)])
    _touch(tmp_path / "msk", "00.png")
    with pytest.raises(ValueError, match=r"7 image.*msk.*01, 02, 03, 04, 05 \.\.\. \(7 in all\)") as err:
        folder_datalist(tmp_path / "img", tmp_path / "msk")
    assert "06" not in str(err.value).split("(7 in all)")[0]


def test_mask_without_image_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _touch(tmp_path / "img", "a.png")
    _touch(tmp_path / "msk", "a.png", "orphan.png")
    with caplog.at_level(logging.WARNING):
        items = folder_datalist(tmp_path / "img", tmp_path / "msk")
    assert len(items) == 1
    assert "orphan" in caplog.text


def test_duplicate_stems(tmp_path: Path) -> None:
    _touch(tmp_path / "img", "a.png", "a.jpg")
    _touch(tmp_path / "msk", "a.png")
    with pytest.raises(ValueError, match=r"more than once.*a\.jpg"):
        folder_datalist(tmp_path / "img", tmp_path / "msk")


@pytest.fixture
def three_cases(tmp_path: Path) -> Path:
    _touch(tmp_path / "img", "a.png", "b.png", "c.png")
    _touch(tmp_path / "msk", "a.png", "b.png", "c.png")
    return tmp_path


def test_json_split_file(three_cases: Path) -> None:
    split = three_cases / "split.json"
    split.write_text(json.dumps({"train": ["c", "a.png"], "test": ["b"]}))
    items = folder_datalist(three_cases / "img", three_cases / "msk", split_file=split, split="train")
    assert [i["id"] for i in items] == ["a", "c"]
    with pytest.raises(ValueError, match=r"train.*test|test.*train"):
        folder_datalist(three_cases / "img", three_cases / "msk", split_file=split)
    with pytest.raises(ValueError, match="val"):
        folder_datalist(three_cases / "img", three_cases / "msk", split_file=split, split="val")


def test_text_split_file(three_cases: Path) -> None:
    split = three_cases / "test.txt"
    split.write_text("# test ids\nb\n\nc\n")
    items = folder_datalist(three_cases / "img", three_cases / "msk", split_file=split)
    assert [i["id"] for i in items] == ["b", "c"]
    assert read_split_ids(split) == ["b", "c"]


def test_split_file_unknown_ids(three_cases: Path) -> None:
    split = three_cases / "test.txt"
    split.write_text("b\nzz1\nzz2\n")
    with pytest.raises(ValueError, match=r"2 id.*zz1, zz2"):
        folder_datalist(three_cases / "img", three_cases / "msk", split_file=split)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        folder_datalist(three_cases / "img", three_cases / "msk", split_file=three_cases / "absent.json", split="a")
