"""Test/pool splits as in the BLO-SAM paper, and seeded few-shot sampling for bi-level training."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bundle.errors import BundleInputError


def _sorted_by_id(datalist: Sequence[dict]) -> list[dict]:
    """Sort by id, refusing duplicates (they would make splits depend on the input order)."""
    ids = [str(item["id"]) for item in datalist]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise BundleInputError(f"duplicate ids in the data list: {dup[:5]}")
    return sorted(datalist, key=lambda item: str(item["id"]))


def paper_split(datalist: Sequence[dict], test_size: int) -> tuple[list[dict], list[dict]]:
    """Split into (training pool, test): the test split is the last ``test_size`` ids in sorted order.

    The BLO-SAM paper tests on the last 500 of Kvasir-SEG's 1000 sorted ids and the last 147 of JSRT's 247.

    Args:
        datalist: items with an ``id``.
        test_size: number of test items.

    Returns:
        (pool, test), both sorted by id.

    Raises:
        ValueError: ``test_size`` is negative or leaves no training pool.
    """
    items = _sorted_by_id(datalist)
    if test_size < 0 or test_size >= len(items):
        raise BundleInputError(
            f"test_size {test_size} must be >= 0 and smaller than the data list ({len(items)} items)"
        )
    cut = len(items) - test_size
    return items[:cut], items[cut:]


@dataclass
class FewShotSplit:
    """A few-shot split: D1 (lower level), D2 (upper level), validation, test and the whole training pool."""

    lower: list[dict]
    upper: list[dict]
    val: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    pool: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        """One line per subset with its size and the ids of the few-shot sets."""

        def ids(items: list[dict]) -> str:  # MONAI Label's items have no id: their image file names
            return ", ".join(str(i["id"]) if "id" in i else os.path.basename(str(i.get("image", "?"))) for i in items)

        return "\n".join(
            [
                f"D1 (lower level): {len(self.lower)} [{ids(self.lower)}]",
                f"D2 (upper level): {len(self.upper)} [{ids(self.upper)}]",
                f"val: {len(self.val)}, test: {len(self.test)}, pool: {len(self.pool)}",
            ]
        )


def few_shot_split(
    datalist: Sequence[dict],
    test_size: int,
    shots: int,
    seed: int,
    val_size: int = 0,
    test: Sequence[dict] | None = None,
    min_shots: int = 2,
) -> FewShotSplit:
    """Draw ``shots`` training items from the pool, split into D1 and D2, plus a validation set.

    The pool (everything but the last ``test_size`` ids) is sorted by id, then permuted with
    ``numpy.random.default_rng(seed)``: D1 is the first ``ceil(shots / 2)`` items of the permutation,
    D2 the next ones up to ``shots``, and the validation set the last ``val_size`` items. So for one
    seed the result does not depend on the input order, the k-shot sets are nested (the 4 shots are in
    the 8 shots), and the validation set is the same for every k.

    Args:
        datalist: items with an ``id``.
        test_size: number of test items (last sorted ids).
        shots: number of training images k (>= 2: one per level at least).
        seed: random seed.
        val_size: number of validation items (0 for none).
        test: a data set's own official test list (then ``test_size`` must be 0 and the whole
            ``datalist`` is the training pool), e.g. the dental data set's test folder.
        min_shots: the fewest items allowed: 2 for images (one per level); 1 for volumes, whose
            slices can feed both levels (:class:`bundle.data.volumes.VolumeSlicing`).

    Returns:
        The split; each subset sorted by id.

    Raises:
        ValueError: ``shots < 2``, ``val_size < 0``, or ``shots + val_size`` larger than the pool.
    """
    if shots < min_shots:
        what = "one image per level (shots >= 2)" if min_shots >= 2 else f"{min_shots} labelled item(s)"
        raise BundleInputError(f"--shots {shots}: bi-level training needs at least {what}")
    if val_size < 0:
        raise BundleInputError(f"--val_size {val_size} must be >= 0")
    if test is not None:
        if test_size:
            raise BundleInputError(f"--test_size {test_size} with an explicit test list: set --test_size 0")
        test = _sorted_by_id(test)
        overlap = {d["id"] for d in test} & {d["id"] for d in datalist}
        if overlap:
            raise BundleInputError(f"test list and training pool share ids: {sorted(overlap)[:5]}")
    pool, own_test = paper_split(datalist, test_size)
    test = own_test if test is None else test
    if shots + val_size > len(pool):
        raise BundleInputError(
            f"k larger than the pool: --shots {shots} + --val_size {val_size} > pool size {len(pool)} "
            f"({len(datalist)} items - {test_size} test)"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    n_lower = math.ceil(shots / 2)

    def pick(indices: np.ndarray) -> list[dict]:
        return [pool[i] for i in sorted(int(j) for j in indices)]

    return FewShotSplit(
        lower=pick(order[:n_lower]),
        upper=pick(order[n_lower:shots]),
        val=pick(order[len(order) - val_size :]) if val_size else [],
        test=test,
        pool=pool,
    )


def split_halves(items: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """D1 and D2 of a list of labelled items: the first ``ceil(n / 2)`` items and the rest.

    The training config gives ``train#dataset#data`` (by default ``split.lower + split.upper``,
    which this splits back exactly) to this function, so a tool that replaces that list (MONAI
    Label's trainer writes its labelled studies there) gets the same bi-level split of its own list.

    Raises:
        BundleInputError: fewer than 2 items (each level needs one).
    """
    items = list(items)
    if len(items) < 2:
        raise BundleInputError(
            f"{len(items)} labelled image(s): bi-level training needs at least 2 (one per level); label more images"
        )
    cut = math.ceil(len(items) / 2)
    return items[:cut], items[cut:]


def all_labelled(halves: tuple[Sequence[dict], Sequence[dict]]) -> list[dict]:
    """Every labelled item of D1 and D2 once, in their order: what a single-level ``--method`` trains on.

    For a list split by :func:`split_halves` this is the list itself; with one labelled volume both
    halves are the same list (:meth:`bundle.data.volumes.VolumeSlicing.halves`), counted once.
    """
    lower, upper = halves
    return list(lower) if lower is upper else [*lower, *upper]
