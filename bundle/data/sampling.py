"""An endless, seeded, resumable stream of shuffled indices for the few-shot data loaders.

Each pass over the data set is a permutation drawn from ``numpy.random.default_rng([seed, pass])``,
so the order depends only on the seed and the position in the stream, never on a global RNG or
on how many iterators were created. The position is the sampler's whole state: a resumed run that
restores it draws exactly the batches the interrupted run would have drawn.

Across ``num_replicas`` processes every process walks the same global stream, cut into global
batches of ``batch_size``, and takes its contiguous share of each: rank r gets items
``[r * b, (r + 1) * b)`` of every global batch, ``b = batch_size / num_replicas``. Together the
processes see exactly the global batches one process would, and the position (the state) is the
same on every rank after each batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class CyclicShuffleSampler(Sampler[int]):
    """Endless shuffled passes over ``range(size)``; every index once per pass.

    MONAI's / PyTorch's ``DistributedSampler`` deals out one finite epoch at a time (padding it to
    a multiple of the world size); the trainer needs one endless, resumable stream whose global
    batches do not depend on the number of processes, hence this sampler.

    Args:
        size: number of items in the data set.
        seed: seed of the permutations.
        num_replicas: number of processes sharing each global batch (1: no sharing).
        rank: this process's rank, ``0 <= rank < num_replicas``.
        batch_size: the global batch size, a multiple of ``num_replicas``; each process's data
            loader takes ``batch_size // num_replicas`` per batch. Only needed when ``num_replicas > 1``.
    """

    def __init__(
        self, size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0, batch_size: int | None = None
    ) -> None:
        if size < 1:
            raise ValueError(f"CyclicShuffleSampler needs a non-empty data set, got size {size}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas}).")
        if num_replicas > 1 and (batch_size is None or batch_size % num_replicas):
            raise ValueError(
                f"the global batch size ({batch_size}) must be a multiple of the number of processes "
                f"({num_replicas}), so that every process gets an equal share of each batch."
            )
        self.size = int(size)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.batch_size = int(batch_size) if batch_size is not None else 1
        self.drawn = 0  # position in the global stream

    def permutation(self, index: int) -> np.ndarray:
        """The order of pass ``index``."""
        return np.random.default_rng([self.seed, index]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        share = self.batch_size // self.num_replicas
        cached: tuple[int, np.ndarray] | None = None
        while True:
            position = self.drawn
            pass_index, offset = divmod(position, self.size)
            if cached is None or cached[0] != pass_index:
                cached = (pass_index, self.permutation(pass_index))
            in_batch = position % self.batch_size
            if self.num_replicas == 1 or in_batch // share == self.rank:
                # after this process's last item of a global batch, skip the other processes' items
                # now, so that every rank's position is the start of the next global batch
                last = self.num_replicas > 1 and in_batch % share == share - 1
                self.drawn = position - in_batch + self.batch_size if last else position + 1
                yield int(cached[1][offset])
            else:
                self.drawn = position + 1

    def state_dict(self) -> dict[str, int]:
        return {"drawn": self.drawn, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["size"], state["seed"]) != (self.size, self.seed):
            raise ValueError(
                f"sampler state is for size {state['size']} / seed {state['seed']}, " f"not {self.size} / {self.seed}"
            )
        self.drawn = int(state["drawn"])
