"""Anatomy-aware augmentation presets and the seeded, finite bank of views."""

from __future__ import annotations

import pytest
import torch
from monai.data import CacheDataset
from monai.transforms import RandFlipd, Transform

from bundle.augmentation import (
    PRESETS,
    AugmentationBankd,
    RandZoomOutLarged,
    augmentation_transforms,
    bank_datalist,
    training_augmentation,
)


def _item(view: int | None = None, item_id: str = "a") -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 32, 24, generator=g)
    label = (image[:1] > 0.5).long()
    item = {"image": image, "label": label, "id": item_id}
    return item if view is None else {**item, "view": view}


@pytest.mark.parametrize("name", PRESETS)
def test_presets_keep_image_and_label_aligned(name):
    transforms = augmentation_transforms(name)
    bank = AugmentationBankd(transforms, seed=3)
    for view in range(1, 6):
        out = bank(_item(view))
        assert out["image"].shape[0] == 3 and out["label"].shape[0] == 1
        assert out["image"].shape[1:] == out["label"].shape[1:]


def test_radiographs_are_never_flipped_up_down():
    for name in ("radiograph", "radiograph_lateral"):
        flips = [t for t in augmentation_transforms(name) if isinstance(t, RandFlipd)]
        assert all(t.flipper.spatial_axis == 1 for t in flips)  # left-right only
    assert not [t for t in augmentation_transforms("radiograph_lateral") if isinstance(t, RandFlipd)]


def test_a_view_is_the_same_every_time_and_views_differ():
    bank = AugmentationBankd(augmentation_transforms("endoscopy"), seed=0)
    first = [bank(_item(v))["image"] for v in range(4)]
    again = [bank(_item(v))["image"] for v in range(4)]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first[0], _item()["image"])  # view 0 is the image itself
    assert (
        not any(torch.equal(first[0], v) for v in first[1:])
        or len({tuple(v.flatten()[:8].tolist()) for v in first}) > 1
    )
    other_seed = AugmentationBankd(augmentation_transforms("endoscopy"), seed=1)
    assert any(not torch.equal(other_seed(_item(v))["image"], first[v]) for v in range(1, 4))


def test_bank_datalist_and_cache_hold_every_view_once():
    items = [{"id": "a"}, {"id": "b"}]
    bank = bank_datalist(items, 3)
    assert [(d["id"], d["view"]) for d in bank] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert bank_datalist(items, 0) == items
    data = [_item(d["view"], d["id"]) for d in bank]
    calls = []
    aug = training_augmentation("endoscopy", 3, seed=0)
    assert len(aug) == 1 and isinstance(aug[0], AugmentationBankd)

    class Counting(Transform):  # a Transform, as in the configs: CacheDataset caches its output
        def __call__(self, d):
            calls.append(d["view"])
            return aug[0](d)

    ds = CacheDataset(data, transform=Counting(), cache_rate=1.0, progress=False)
    views = [ds[i]["image"] for i in range(len(ds))] + [ds[i]["image"] for i in range(len(ds))]
    assert len(calls) == len(data)  # each view built once, then served from the cache
    assert torch.equal(views[1], views[len(ds) + 1])


def test_no_bank_draws_fresh_random_transforms():
    assert training_augmentation("flips", 0) and all(
        isinstance(t, RandFlipd) for t in training_augmentation("flips", 0)
    )


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="radiograph"):
        augmentation_transforms("xray")


def test_endoscopy_zoom_changes_the_object_size_and_endoscopy_does_not():
    label = torch.zeros(1, 96, 96)
    label[:, 32:64, 32:64] = 1
    item = {"image": torch.rand(3, 96, 96), "label": label, "id": "polyp"}

    def areas(name: str) -> list[float]:
        bank = AugmentationBankd(augmentation_transforms(name), seed=0)
        return [float(bank({**item, "view": v})["label"].sum()) / float(label.sum()) for v in range(1, 17)]

    assert all(a == pytest.approx(1.0) for a in areas("endoscopy"))  # flips and quarter turns keep the area
    zoomed = areas("endoscopy_zoom")
    assert min(zoomed) < 0.85 and max(zoomed) > 1.15


def _square_item(side: int, frame: int = 96) -> dict:
    label = torch.zeros(1, frame, frame)
    start = (frame - side) // 2
    label[:, start : start + side, start : start + side] = 1
    return {"image": torch.rand(3, frame, frame), "label": label, "id": f"polyp{side}"}


def test_zoom_out_shrinks_large_objects_only():
    zoom = RandZoomOutLarged(["image", "label"], min_fraction=0.15, prob=1.0, min_zoom=0.5, max_zoom=0.5)
    small = _square_item(24)  # 6 % of the frame: passed through untouched
    out = zoom(small)
    assert torch.equal(out["image"], small["image"]) and torch.equal(out["label"], small["label"])
    assert torch.equal(zoom.inverse(out)["image"], small["image"])  # the skipped item keeps an invertible trace
    large = _square_item(48)  # 25 %: halved on each side, frame size kept, zero border, label still binary
    out = zoom(large)
    image, label = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
    assert image.shape == large["image"].shape and label.shape == large["label"].shape
    assert not torch.equal(image, large["image"]) and float(image[:, :20].abs().max()) == 0.0
    assert set(torch.unique(label).tolist()) <= {0.0, 1.0}
    assert float(label.sum()) == pytest.approx(float(large["label"].sum()) / 4, rel=0.1)
    numpy_label = {**large, "label": large["label"].numpy().astype("int64")}  # labels as read from disk
    assert float(torch.as_tensor(zoom(numpy_label)["label"]).sum()) == pytest.approx(float(label.sum()))
    with pytest.raises(ValueError, match="zoom-out"):
        RandZoomOutLarged(["image", "label"], min_zoom=0.8, max_zoom=1.2)


def test_endoscopy_zoomlarge_bank_zooms_large_polyps_out_and_repeats_views():
    bank = AugmentationBankd(augmentation_transforms("endoscopy_zoomlarge"), seed=3)

    def areas(item: dict, views: range) -> dict[int, float]:
        return {v: float(bank({**item, "view": v})["label"].sum()) / float(item["label"].sum()) for v in views}

    large = areas(_square_item(48), range(1, 13))
    assert max(large.values()) <= 1.0 + 1e-6  # only ever smaller
    assert sum(a < 0.7 for a in large.values()) >= 6  # p 0.8: most views zoomed
    assert areas(_square_item(48), range(12, 0, -1)) == large  # the same views in any order, from the same bank
    assert all(a == pytest.approx(1.0) for a in areas(_square_item(24), range(1, 13)).values())  # small: same size
