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


class _CountingScaler(torch.amp.GradScaler):
    """A CPU GradScaler that doubles its scale at every update (growth_interval=1) and counts them."""

    def __init__(self) -> None:
        super().__init__("cpu", init_scale=2.0**10, growth_interval=1)
        self.updates = 0

    def update(self, new_scale=None) -> None:
        self.updates += 1
        super().update(new_scale)


@pytest.mark.parametrize("hypergradient", ["first", "finite_difference"])
def test_grad_scaler_updates_once_per_iteration(make_trainer, tiny_net, one_thread, monkeypatch, hypergradient):
    # CUDA float16 is not available here: the same scaler logic runs on CPU (bfloat16 autocast)
    from bundle.engines import build_hypergradient

    monkeypatch.setattr(BiLevelTrainer, "_make_scaler", lambda self: _CountingScaler())
    torch.manual_seed(0)
    trainer = make_trainer(tiny_net, ["a", "b"], ["c", "d"], iterations=3, amp=True)
    trainer.hypergradient = build_hypergradient(hypergradient)
    trainer.run()
    assert trainer.scaler.updates == 3, "GradScaler.update() must run exactly once per iteration"
    assert trainer.scaler.get_scale() == 2.0 ** (10 + 3)  # no step was skipped: one doubling each
    _assert_finite_losses(trainer)


def _engine_after_a_lower_step(net, autocast, scaler=None):
    """An engine-like namespace after one AdamW lower step, as the trainer leaves it."""
    from types import SimpleNamespace

    from monai.inferers import SimpleInferer
    from monai.losses import DiceCELoss

    from bundle.engines.hypergradient import LowerStep
    from tests.engines.conftest import synthetic_items

    items = synthetic_items(["a", "b"])
    x1, y1 = items[0]["image"][None], items[0]["label"][None]
    lower = net.lower_parameters()
    opt = torch.optim.AdamW(lower, lr=5e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)
    for _ in range(2):  # two steps: LoRA B != 0, so every lower weight has a second-order term
        before = [p.detach().clone() for p in lower]
        opt.zero_grad()
        loss_fn(net(x1), y1).backward()
        opt.step()
    grads = [p.grad.detach().clone() for p in lower]
    engine = SimpleNamespace(network=net, loss_function=loss_fn, inferer=SimpleInferer(), scaler=scaler,
                             autocast=autocast, lower_optimizer=opt,
                             lower_step=LowerStep(x1, y1, before, grads))  # fmt: skip
    return engine, items[1]["image"][None], items[1]["label"][None]


def test_finite_difference_hypergradient_is_float32_under_autocast(tiny_net, one_thread):
    # a central difference at radius 1e-3 is below bfloat16 / float16 resolution: under the
    # trainer's autocast it is computed in float32 and equals the fp32 run's hypergradient; with a
    # GradScaler it is handed to scaler.step multiplied by the scale (which the step divides out)
    import contextlib
    from types import SimpleNamespace

    from bundle.engines import FiniteDifferenceHypergradient

    def hypergradient(autocast, scaler=None) -> torch.Tensor:
        engine, x2, y2 = _engine_after_a_lower_step(copy.deepcopy(tiny_net), autocast, scaler)
        FiniteDifferenceHypergradient()(engine, x2, y2)
        return torch.cat([p.grad.flatten() for p in engine.network.upper_parameters()])

    fp32 = hypergradient(contextlib.nullcontext)
    bf16 = hypergradient(lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    scaler = SimpleNamespace(get_scale=lambda: 1024.0)
    scaled = hypergradient(lambda: torch.autocast("cpu", dtype=torch.bfloat16), scaler)
    print(f"max |bf16 - fp32| {(bf16 - fp32).abs().max().item():.2e} of max |fp32| {fp32.abs().max().item():.2e}")
    torch.testing.assert_close(bf16, fp32, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(scaled / 1024.0, fp32, rtol=1e-5, atol=1e-8)
