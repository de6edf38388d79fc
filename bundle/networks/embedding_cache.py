"""Cache of frozen image-encoder outputs, keyed by image content, encoder weights and input size.

The encoder is frozen, so an image embedding is a pure function of (preprocessed image, encoder
weights). Computing it once turns a few-shot run from hours of encoder forwards into minutes of
decoder steps. The key hashes the preprocessed image tensor itself (so the input size, the
normalisation and any augmentation are part of it) together with a digest of the encoder's weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor

from bundle.atomic import save_atomically

logger = logging.getLogger(__name__)


class EmbeddingCache:
    """An LRU memory cache of embeddings, optionally backed by a folder of ``.pt`` files.

    Args:
        cache_dir: folder for the disk cache (created on first write); ``None`` keeps it in memory.
        max_items: embeddings kept in memory (a 64x64x256 float32 embedding takes 4 MiB).
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, max_items: int = 256) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir not in (None, "") else None
        self.max_items = max_items
        self._memory: OrderedDict[str, Tensor] = OrderedDict()
        self._lock = threading.Lock()  # a server's models may share one cache across request threads
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(image: Tensor, encoder_id: str) -> str:
        """Content key of one preprocessed image (C x H x W) for one encoder."""
        data = image.detach().to("cpu", torch.float32).contiguous()
        h = hashlib.sha256(f"{encoder_id}|{tuple(data.shape)}".encode())
        h.update(data.numpy().tobytes())
        return h.hexdigest()

    def get(self, key: str) -> Tensor | None:
        """The cached embedding (on CPU), or ``None``."""
        with self._lock:
            value = self._memory.get(key)
            if value is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return value
        path = self._path(key)
        if path is not None and path.is_file():
            try:
                value = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # a damaged entry is recomputed, never trusted
                logger.warning(f"embedding cache: dropping unreadable entry {path} ({type(err).__name__}: {err})")
                path.unlink(missing_ok=True)
            else:
                self._remember(key, value)
                self.hits += 1
                return value
        self.misses += 1
        return None

    def put(self, key: str, value: Tensor) -> None:
        """Store one embedding (memory, and disk atomically: temp file then rename)."""
        value = value.detach().to("cpu").contiguous()
        # a MONAI MetaTensor (what MONAI data loaders yield, and so what the encoder returns for
        # them) would be pickled with its metadata, which torch.load(weights_only=True) refuses:
        # store the plain tensor
        value = value.as_tensor() if hasattr(value, "as_tensor") else value
        self._remember(key, value)
        path = self._path(key)
        if path is None or path.is_file():
            return
        save_atomically(value.clone(), path)

    def __deepcopy__(self, memo: dict) -> EmbeddingCache:
        # A copy of a network shares its cache (keys hold the encoder's weight digest, so a copy whose
        # encoder changes cannot read stale entries). MONAI Label deep-copies each model's network
        # before its first request: a copied cache would no longer be shared between a task's models.
        return self

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock")  # pickling (spawned workers): a lock cannot travel, each process makes its own
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def clear_memory(self) -> None:
        self._memory.clear()

    def __len__(self) -> int:
        return len(self._memory)

    def _remember(self, key: str, value: Tensor) -> None:
        with self._lock:
            self._memory[key] = value
            self._memory.move_to_end(key)
            while len(self._memory) > self.max_items:
                self._memory.popitem(last=False)

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.pt"


_SHARED: EmbeddingCache | None = None


def shared_embedding_cache(max_items: int = 32) -> EmbeddingCache | None:
    """The process's one in-memory cache (``None`` when ``max_items`` is 0).

    A MONAI Label server builds one network per model from the same task: its auto-segmentation model
    and its interactive model (:mod:`bundle.interactive`) share this cache, so the first click on an
    image the task has already segmented costs a decoder pass. Keys hold the encoder's weight digest,
    so networks with other encoders never read each other's entries.
    """
    global _SHARED
    if max_items <= 0:
        return None
    if _SHARED is None:
        _SHARED = EmbeddingCache(max_items=max_items)
    _SHARED.max_items = max(_SHARED.max_items, int(max_items))
    return _SHARED
