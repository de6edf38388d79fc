"""Tests for bundle.data.fewshot: the paper's test split and seeded few-shot sampling."""

from __future__ import annotations

import random

import pytest

from bundle.data import FewShotSplit, few_shot_split, paper_split


def _datalist(n: int) -> list[dict]:
    return [{"image": f"{i:04d}.png", "label": f"m{i:04d}.png", "id": f"{i:04d}"} for i in range(n)]


def _ids(items: list[dict]) -> list[str]:
    return [i["id"] for i in items]


def test_paper_split_takes_last_ids() -> None:
    data = _datalist(10)
    random.Random(1).shuffle(data)
    pool, test = paper_split(data, 4)
    assert _ids(pool) == [f"{i:04d}" for i in range(6)]
    assert _ids(test) == [f"{i:04d}" for i in range(6, 10)]


def test_paper_split_too_large() -> None:
    with pytest.raises(ValueError, match=r"10.*10"):
        paper_split(_datalist(10), 10)


def test_duplicate_ids_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        paper_split(_datalist(3) + _datalist(1), 1)


def test_seeded_reproducibility_and_order_independence() -> None:
    data = _datalist(50)
    first = few_shot_split(data, test_size=20, shots=6, seed=3, val_size=5)
    shuffled = list(data)
    random.Random(7).shuffle(shuffled)
    second = few_shot_split(shuffled, test_size=20, shots=6, seed=3, val_size=5)
    assert first == second
    other = few_shot_split(data, test_size=20, shots=6, seed=4, val_size=5)
    assert _ids(other.lower + other.upper) != _ids(first.lower + first.upper)


def test_sizes_and_disjointness() -> None:
    split = few_shot_split(_datalist(40), test_size=15, shots=5, seed=0, val_size=7)
    assert isinstance(split, FewShotSplit)
    sizes = [len(g) for g in (split.lower, split.upper, split.val, split.test, split.pool)]
    assert sizes == [3, 2, 7, 15, 25]
    groups = [set(_ids(g)) for g in (split.lower, split.upper, split.val, split.test)]
    assert sum(len(g) for g in groups) == len(set().union(*groups))
    pool = set(_ids(split.pool))
    assert groups[0] | groups[1] | groups[2] <= pool
    assert not groups[3] & pool
    assert "D1 (lower level): 3" in split.summary() and "test: 15" in split.summary()


def test_nested_shots_and_fixed_val() -> None:
    data = _datalist(60)
    four = few_shot_split(data, test_size=30, shots=4, seed=1, val_size=5)
    eight = few_shot_split(data, test_size=30, shots=8, seed=1, val_size=5)
    assert set(_ids(four.lower + four.upper)) <= set(_ids(eight.lower + eight.upper))
    assert four.val == eight.val


def test_val_size_zero() -> None:
    assert few_shot_split(_datalist(10), test_size=5, shots=2, seed=0, val_size=0).val == []


def test_shots_must_cover_both_levels() -> None:
    with pytest.raises(ValueError, match="at least one image per level"):
        few_shot_split(_datalist(10), test_size=5, shots=1, seed=0)


def test_k_larger_than_pool() -> None:
    with pytest.raises(ValueError, match=r"k larger than the pool.*--shots 4.*--val_size 3.*pool size 5"):
        few_shot_split(_datalist(10), test_size=5, shots=4, seed=0, val_size=3)


# ---- an explicit official test list (test=) ----------------------------------------------------------------


def _named(ids: list[str]) -> list[dict]:
    return [{"image": f"{i}.png", "label": f"m{i}.png", "id": i} for i in ids]


def test_explicit_test_list_is_sorted_and_whole_datalist_is_pool() -> None:
    data = _datalist(12)
    random.Random(3).shuffle(data)
    official = _named(["t3", "t1", "t2"])
    split = few_shot_split(data, test_size=0, shots=4, seed=0, val_size=3, test=official)
    assert _ids(split.test) == ["t1", "t2", "t3"]
    assert _ids(split.pool) == [f"{i:04d}" for i in range(12)]
    assert (len(split.lower), len(split.upper), len(split.val)) == (2, 2, 3)
    chosen = set(_ids(split.lower + split.upper + split.val))
    assert len(chosen) == 7 and chosen <= set(_ids(split.pool))
    assert not chosen & set(_ids(split.test))
    # same training draw as without a test list (test_size=0): the test list only adds the test set
    plain = few_shot_split(data, test_size=0, shots=4, seed=0, val_size=3)
    for name in ("lower", "upper", "val", "pool"):
        assert getattr(plain, name) == getattr(split, name), name
    assert plain.test == []


def test_explicit_test_list_with_test_size_refused() -> None:
    with pytest.raises(ValueError, match="--test_size 2 with an explicit test list"):
        few_shot_split(_datalist(12), test_size=2, shots=2, seed=0, test=_named(["t1"]))


def test_explicit_test_list_overlapping_the_datalist_refused() -> None:
    with pytest.raises(ValueError, match=r"share ids.*0003"):
        few_shot_split(_datalist(12), test_size=0, shots=2, seed=0, test=_named(["0003", "t1"]))


def test_explicit_test_list_duplicates_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        few_shot_split(_datalist(12), test_size=0, shots=2, seed=0, test=_named(["t1", "t1"]))
