"""A model trained on a GPU loads on a CPU-only host through the configs' CheckpointLoader.

No GPU is needed: the checkpoint is written with ``torch.serialization.location_tag`` patched so
that every storage is recorded as living on ``cuda:0``, which is what a GPU run writes. Without a
``map_location`` such a file cannot be read where CUDA is unavailable.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.handlers import CheckpointLoader

ROOT = Path(__file__).resolve().parents[1]


def _save_as_if_on_cuda(obj: object, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(obj, path)


def _parser(configs: list[str], **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / c) for c in configs])
    parser.update({"backbone": "sam_tiny", "device": "$torch.device('cpu')", **overrides})
    return parser


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only host; this one has CUDA")
def test_fake_cuda_checkpoint_needs_a_map_location(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    _save_as_if_on_cuda({"w": torch.ones(3)}, path, monkeypatch)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)
    assert torch.equal(torch.load(path, map_location="cpu", weights_only=True)["w"], torch.ones(3))


@pytest.mark.parametrize(
    ("configs", "loader_id", "path_key"),
    [(["inference.json"], "handlers#0", "ckpt"), (["train.json", "evaluate.json"], "validate#handlers#0", "ckpt_path")],
)
def test_configs_load_a_gpu_checkpoint_on_cpu(tmp_path, monkeypatch, configs, loader_id, path_key):
    path = tmp_path / "model.pt"
    trained = _parser(configs, **{path_key: str(path)}).get_parsed_content("network")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.125)  # weights the freshly built network does not have
    _save_as_if_on_cuda(trained.state_dict(), path, monkeypatch)

    parser = _parser(configs, **{path_key: str(path)})
    loader = parser.get_parsed_content(loader_id)
    assert isinstance(loader, CheckpointLoader) and loader.map_location == "cpu"
    network = parser.get_parsed_content("network")
    engine = Engine(lambda e, b: None)
    loader(engine)
    loaded = network.state_dict()
    assert all(t.device.type == "cpu" for t in loaded.values())
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded[name], value), name
