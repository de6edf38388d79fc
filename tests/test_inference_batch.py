"""configs/inference.json: ``batch_size`` (default 1) and the bounded in-memory embedding cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from bundle.export import task_keys
from bundle.networks import EmbeddingCache

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bundle" / "sample_data"
CONFIG = str(ROOT / "configs" / "inference.json")


def _inputs(folder: Path) -> Path:
    """Two colour endoscopy images and one grey radiograph, of different sizes."""
    folder.mkdir()
    for src in sorted((SAMPLE / "kvasir" / "images").iterdir())[:2]:
        shutil.copy(src, folder / src.name)
    shutil.copy(sorted((SAMPLE / "jsrt" / "images").iterdir())[0], folder / "grey.png")
    return folder


def _checkpoint(path: Path) -> Path:
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update({"backbone": "sam_tiny", "device": "$torch.device('cpu')"})
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def _run(inputs: Path, out: Path, ckpt: Path, batch_size: int) -> dict[str, np.ndarray]:
    workflow = ConfigWorkflow(config_file=CONFIG, workflow_type="infer", bundle_root=str(ROOT), backbone="sam_tiny",
                              input_dir=str(inputs), output_dir=str(out), ckpt=str(ckpt), batch_size=batch_size,
                              device="$torch.device('cpu')")  # fmt: skip
    workflow.initialize()
    assert workflow.parser.get_parsed_content("dataloader").batch_size == batch_size
    workflow.run()
    workflow.finalize()
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}


def test_batched_inference_writes_the_same_masks_as_batch_1(tmp_path):
    inputs, ckpt = _inputs(tmp_path / "in"), _checkpoint(tmp_path / "model.pt")
    one = _run(inputs, tmp_path / "b1", ckpt, 1)
    two = _run(inputs, tmp_path / "b2", ckpt, 2)  # a full batch and a last batch of one
    assert sorted(one) == sorted(p.stem for p in inputs.iterdir())
    for name, mask in one.items():
        assert mask.shape == np.asarray(Image.open(next(inputs.glob(f"{name}.*")))).shape[:2]
        np.testing.assert_array_equal(two[name], mask)


def test_inference_network_keeps_a_bounded_memory_embedding_cache():
    parser = ConfigParser()
    parser.read_config(CONFIG)
    assert parser["batch_size"] == 1
    parser.update({"backbone": "sam_tiny", "device": "$torch.device('cpu')"})
    net = parser.get_parsed_content("network").eval()
    cache = net.embedding_cache
    assert isinstance(cache, EmbeddingCache) and cache.cache_dir is None and cache.max_items >= 32
    image = torch.rand(1, 3, net.input_size, net.input_size)
    misses, hits = cache.misses, cache.hits  # the process's shared cache: other tests used it too
    with torch.no_grad():
        first, again = net(image), net(image)  # the second call is a decoder pass on the cached embedding
    assert (cache.misses - misses, cache.hits - hits) == (1, 1)
    torch.testing.assert_close(again, first)
    # a second network of the same task (MONAI Label's interactive model) reads the same cache
    assert parser.get_parsed_content("network_def", lazy=False).embedding_cache is cache

    parser.update({"embedding_cache_items": 0})
    assert parser.get_parsed_content("network_def").embedding_cache is None


def test_export_does_not_carry_trainings_batch_size_or_cache_into_the_task():
    assert "batch_size" not in task_keys() and "embedding_cache" not in task_keys()
