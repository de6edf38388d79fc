"""The learnt prompt's kinds: dense (the paper's), sparse tokens from a whole-image box, a dense map."""

from __future__ import annotations

import pytest
import torch

from bundle.networks import BLOSAM
from bundle.networks.blo_sam import parse_prompt


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _net(prompt: str, **kwargs) -> BLOSAM:
    torch.manual_seed(0)
    return BLOSAM("sam_tiny", num_classes=1, input_size=64, prompt=prompt, **kwargs).eval()


def test_parse_prompt_orders_and_refuses_unknown_kinds():
    assert parse_prompt("tokens+dense") == ("dense", "tokens")
    assert parse_prompt("map") == ("map",)
    with pytest.raises(ValueError, match="dense, tokens, map"):
        parse_prompt("box")


@pytest.mark.parametrize("prompt", ["dense", "tokens", "map", "tokens+dense", "tokens+map", "dense+map"])
def test_every_kind_is_the_upper_level_and_gets_gradients(prompt, images):
    net = _net(prompt).train()
    upper = net.upper_parameters()
    assert upper and all(p.requires_grad for p in upper)
    assert not {id(p) for p in upper} & {id(p) for p in net.lower_parameters()}
    net(images)[:, 1].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in upper)
    if "dense" not in prompt:  # SAM's own no-mask embedding stays fixed
        assert not net.prompt_embedding.requires_grad


def test_tokens_start_as_a_whole_image_box_prompt(images):
    net = _net("tokens")
    box = torch.tensor([[0.0, 0.0, 63.0, 63.0]])
    sparse, dense = net.prompt_encoder(points=None, boxes=box, masks=None)
    emb = net.encode(images)
    expected = net.decode(emb, sparse.expand(2, -1, -1), dense)
    torch.testing.assert_close(net(images), expected)
    assert net.prompt_tokens.shape == (2, 256)
    assert _net("tokens", prompt_tokens=5).prompt_tokens.shape == (5, 256)


def test_map_alone_starts_as_the_dense_prompt(images):
    torch.testing.assert_close(_net("map")(images), _net("dense")(images))
    torch.testing.assert_close(_net("dense+map")(images), _net("dense")(images))


@pytest.mark.parametrize("prompt", ["tokens", "map", "tokens+dense"])
def test_checkpoints_carry_the_prompt(prompt, images, tmp_path):
    net = _net(prompt)
    with torch.no_grad():
        for p in net.upper_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    other = BLOSAM("sam_tiny", num_classes=1, input_size=64, prompt=prompt, pretrained=False).eval()
    other.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    torch.testing.assert_close(other(images), net(images))
    with pytest.raises(RuntimeError):  # another prompt kind does not load silently
        BLOSAM("sam_tiny", num_classes=1, input_size=64, prompt="dense").load_state_dict(net.state_dict())


@pytest.mark.parametrize("prompt", ["tokens", "map"])
def test_traced_export_carries_the_prompt(prompt, images):
    net = _net(prompt)
    with torch.no_grad():
        for p in net.upper_parameters():
            p.add_(torch.randn_like(p) * 0.1)
        traced = torch.jit.trace(net, images[:1], check_trace=False)
        torch.testing.assert_close(traced(images[:1]), net(images[:1]), rtol=1e-4, atol=1e-4)


def test_frozen_upscaling_is_not_trained_and_groups_have_their_lr():
    net = _net("dense", train_upscaling=False)
    upscaling = {id(p) for p in net.mask_decoder.output_upscaling.parameters()}
    assert not upscaling & {id(p) for p in net.lower_parameters()}
    assert not any(p.requires_grad for p in net.mask_decoder.output_upscaling.parameters())
    groups = _net("dense").optimizer_groups({"upscaling": 1e-4, "lora": None}, 5e-3)
    assert {g["name"]: g["lr"] for g in groups} == {"lora": 5e-3, "upscaling": 1e-4, "heads": 5e-3}
    assert _net("tokens").optimizer_groups({}, 1e-3, upper=True)[0]["params"][0] is not None


@pytest.mark.parametrize("prompt", ["dense", "tokens", "map", "tokens+dense"])
def test_onnx_export_carries_the_prompt(prompt, images, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    net = _net(prompt)
    with torch.no_grad():
        for p in net.upper_parameters():
            p.add_(torch.randn_like(p) * 0.1)
        reference = net(images[:1]).numpy()
    path = tmp_path / "model.onnx"
    torch.onnx.export(net, (images[:1],), str(path), input_names=["image"], output_names=["pred"], dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": images[:1].numpy()})[0]
    assert abs(out - reference).max() < 1e-3
