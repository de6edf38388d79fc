"""An endless, seeded, resumable stream of shuffled indices for the few-shot data loaders.

Each pass over the data set is a permutation drawn from ``numpy.random.default_rng([seed, pass])``,
so the order depends only on the seed and the position in the stream, never on a global RNG or
on how many iterators were created. The position is the sampler's whole state: a resumed run that
restores it draws exactly the batches the interrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class CyclicShuffleSampler(Sampler[int]):
    """Endless shuffled passes over ``range(size)``; every index once per pass.

    Args:
        size: number of items in the data set.
        seed: seed of the permutations.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 1:
            raise ValueError(f"CyclicShuffleSampler needs a non-empty data set, got size {size}.")
        self.size = int(size)
        self.seed = int(seed)
        self.drawn = 0  # indices handed out so far

    def permutation(self, index: int) -> np.ndarray:
        """The order of pass ``index``."""
        return np.random.default_rng([self.seed, index]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        while True:
            position, offset = divmod(self.drawn, self.size)
            for i in self.permutation(position)[offset:]:
                self.drawn += 1
                yield int(i)

    def state_dict(self) -> dict[str, int]:
        return {"drawn": self.drawn, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["size"], state["seed"]) != (self.size, self.seed):
            raise ValueError(
                f"sampler state is for size {state['size']} / seed {state['seed']}, "
                f"not {self.size} / {self.seed}"
            )
        self.drawn = int(state["drawn"])
