"""Mixed precision in the bi-level trainer: bfloat16 autocast on CPU, float16 + GradScaler on CUDA."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from bundle.engines import BiLevelTrainer

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)


def _record_autocast(net, device_type: str) -> list[tuple[bool, torch.dtype]]:
    """(autocast enabled, output dtype) of every call of the decoder's output upscaling."""
    seen: list[tuple[bool, torch.dtype]] = []

    def hook(module, args, output):
        seen.append((torch.is_autocast_enabled(device_type), output.dtype))

    net.mask_decoder.output_upscaling.register_forward_hook(hook)
    return seen


def _assert_finite_losses(trainer: BiLevelTrainer) -> None:
    out = trainer.state.output
    assert math.isfinite(out["lower_loss"]) and math.isfinite(out["upper_loss"]), out
    assert math.isfinite(out["hypergrad_norm"]) and out["hypergrad_norm"] > 0


def test_cpu_amp_runs_under_bfloat16_autocast_without_scaler(make_trainer, tiny_net, one_thread) -> None:
    torch.manual_seed(0)
    seen = _record_autocast(tiny_net, "cpu")
    lower0 = [p.detach().clone() for p in tiny_net.lower_parameters()]
    trainer = make_trainer(tiny_net, ["a", "b"], ["c", "d"], iterations=2, amp=True)
    trainer.run()
    assert trainer.state.iteration == 2
    assert trainer.scaler is None
    _assert_finite_losses(trainer)
    assert len(seen) == 4  # 2 iterations x (lower forward + upper forward)
    assert all(enabled for enabled, _ in seen), seen
    assert all(dtype == torch.bfloat16 for _, dtype in seen), seen
    # the parameters stay float32 and finite, and the lower level did train
    for p in list(tiny_net.lower_parameters()) + list(tiny_net.upper_parameters()):
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
    assert any(not torch.equal(a, b) for a, b in zip(lower0, tiny_net.lower_parameters(), strict=True))


def test_cpu_without_amp_runs_in_float32(make_trainer, tiny_net, one_thread) -> None:
    seen = _record_autocast(tiny_net, "cpu")
    trainer = make_trainer(tiny_net, ["a", "b"], ["c", "d"], amp=False, iterations=1)
    trainer.run()
    assert trainer.scaler is None
    assert seen and all(not enabled and dtype == torch.float32 for enabled, dtype in seen), seen
    _assert_finite_losses(trainer)


@pytest.mark.gpu
@needs_cuda
def test_cuda_amp_uses_grad_scaler(make_trainer, tiny_net) -> None:
    torch.manual_seed(0)
    net = tiny_net.to("cuda")
    seen = _record_autocast(net, "cuda")
    trainer = make_trainer(net, ["a", "b"], ["c", "d"], iterations=2, device="cuda", amp=True)
    trainer.run()
    assert trainer.state.iteration == 2
    assert trainer.scaler is not None
    assert seen and all(enabled and dtype == torch.float16 for enabled, dtype in seen), seen
    _assert_finite_losses(trainer)
    for p in list(net.lower_parameters()) + list(net.upper_parameters()):
        assert p.dtype == torch.float32 and torch.isfinite(p).all()


@pytest.mark.gpu
@needs_cuda
def test_cuda_forward_matches_cpu(tiny_net, monkeypatch) -> None:
    # true float32 on the GPU: no TensorFloat-32 in matmuls or cuDNN convolutions
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    tiny_net.eval()
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu = tiny_net(images)
        gpu_net = copy.deepcopy(tiny_net).to("cuda").eval()
        gpu = gpu_net(images.to("cuda")).cpu()
    assert gpu.dtype == torch.float32 and gpu.shape == cpu.shape
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)
