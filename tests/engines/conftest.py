"""Fixtures for the engine tests: small synthetic D1/D2 sets and a bi-level trainer factory."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader
from monai.losses import DiceCELoss

from bundle.data import CyclicShuffleSampler
from bundle.engines import BiLevelTrainer


def synthetic_items(ids: list[str]) -> list[dict]:
    """Random 256x256 images with a box label whose top edge differs per item."""
    g = torch.Generator().manual_seed(len(ids))
    out = []
    for i, name in enumerate(ids):
        label = torch.zeros(1, 256, 256)
        label[:, 40 + 10 * i : 160, 60:200] = 1
        out.append({"image": torch.randn(3, 256, 256, generator=g), "label": label, "id": name})
    return out


@pytest.fixture
def one_thread():
    """Run torch on one thread: on this 2-core CPU, small tensors (and CPU bfloat16 without
    AVX512-BF16) spend more time in thread handoffs than in arithmetic when another job runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _loader(ids: list[str], batch: int, seed: int) -> DataLoader:
    # as in configs/train.json: endless seeded passes, every item once per pass
    items = synthetic_items(ids)
    return DataLoader(items, batch_size=batch, sampler=CyclicShuffleSampler(len(items), seed), num_workers=0)


@pytest.fixture
def make_trainer():
    """``make_trainer(net, d1_ids, d2_ids, iterations=4, batch=1, lr=5e-3, device="cpu", amp=False)``."""

    def make(net, d1, d2, iterations=4, batch=1, lr=5e-3, device="cpu", amp=False, handlers=None):
        return BiLevelTrainer(
            device=device,
            max_epochs=iterations,
            epoch_length=1,
            lower_data_loader=_loader(d1, batch, seed=0),
            upper_data_loader=_loader(d2, batch, seed=1),
            network=net,
            lower_optimizer=torch.optim.AdamW(net.lower_parameters(), lr=lr),
            upper_optimizer=torch.optim.AdamW(net.upper_parameters(), lr=lr),
            loss_function=DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2),
            train_handlers=handlers,
            amp=amp,
        )

    return make
