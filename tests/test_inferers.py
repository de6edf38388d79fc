"""Slice-wise inference of the 2D model on volumes: geometry and the volumes config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.errors import BundleInputError
from bundle.inferers import SliceWiseInferer, fit_longest_side

ROOT = Path(__file__).resolve().parents[1]


def _smooth_volume(h=90, w=60, d=3) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    vol = torch.stack([torch.exp(-((yy - 0.2 * k) ** 2 + xx**2) * 3) for k in range(d)], -1)
    return vol[None, None]  # 1 x 1 x H x W x D


def _segment_volumes(inputs: Path, out: Path, ckpt: Path) -> subprocess.CompletedProcess:
    """The bundle's volume inference command with the tiny backbone, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run",
         "--config_file", "['configs/inference.json','configs/volumes.json']",
         "--input_dir", str(inputs), "--output_dir", str(out),
         "--ckpt", str(ckpt), "--backbone", "sam_tiny", "--prompt", "dense"],
        cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"), capture_output=True, text=True,
    )  # fmt: skip


def test_fit_longest_side_keeps_aspect_and_pads_at_the_end():
    padded, (h, w) = fit_longest_side(torch.ones(2, 3, 90, 60), 256)
    assert padded.shape == (2, 3, 256, 256) and (h, w) == (256, 171)
    assert padded[..., :h, :w].min() > 0.99 and padded[..., :, w:].abs().max() == 0


def test_slices_come_back_on_the_volume_grid():
    vol = _smooth_volume()
    seen = []

    def network(x):  # echo the image as the foreground logit
        seen.append(tuple(x.shape))
        return torch.cat([-x[:, :1], x[:, :1]], 1)

    out = SliceWiseInferer(input_size=256, slices_per_batch=2)(vol, network)
    assert out.shape == (1, 2, 90, 60, 3)
    assert seen == [(2, 3, 256, 256), (1, 3, 256, 256)]  # grey slices repeated to 3 channels
    corr = np.corrcoef(out[0, 1].flatten().numpy(), vol[0, 0].flatten().numpy())[0, 1]
    assert corr > 0.99
    flipped = SliceWiseInferer(input_size=256, slices_per_batch=2, flip_vertical="true")(vol, network)
    assert torch.allclose(flipped, out, atol=1e-4)  # upside down at the network, back on the grid after
    with pytest.raises(ValueError, match="expects B x C x H x W x D"):
        SliceWiseInferer(256)(torch.zeros(1, 1, 8, 8), network)


def test_volume_inference_writes_a_nifti_on_the_input_grid(tmp_path):
    from bundle.networks import BLOSAM

    torch.manual_seed(0)
    torch.save(BLOSAM("sam_tiny").state_dict(), tmp_path / "tiny.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    affine[:3, 3] = [10, -20, 5]
    data = (_smooth_volume(40, 30, 3)[0, 0].numpy() * 1000 - 500).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), inputs / "case7.nii.gz")
    out = tmp_path / "out"
    proc = _segment_volumes(inputs, out, tmp_path / "tiny.pt")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    # the default --token_prior auto: this checkpoint has no token bank beside it (not trained on volumes), so
    # the volume is segmented by the network alone and the warning names the missing file
    assert f"--token_prior auto: no token bank at {tmp_path / 'token_bank.pt'}" in log, log[-3000:]
    mask = nib.load(out / "case7.nii.gz")
    assert mask.shape == data.shape
    np.testing.assert_allclose(mask.affine, affine, atol=1e-4)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_flip_tta_averages_flipped_predictions_and_is_a_no_op_without_flips():
    from bundle.inferers import FlipTTAInferer

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 2, 3, padding=1)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(FlipTTAInferer([])(x, net), net(x))
        out = FlipTTAInferer([[1]])(x, net)
        expected = (torch.softmax(net(x), 1) + torch.flip(torch.softmax(net(torch.flip(x, [3])), 1), [3])) / 2
        torch.testing.assert_close(torch.softmax(out, 1), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="spatial axes"):
        FlipTTAInferer([[2]])


def test_flip_tta_flips_spatial_prompts_with_the_image():
    """The box bound gets ground-truth masks beside the image: a flipped image needs flipped boxes."""
    from bundle.inferers import FlipTTAInferer

    def net(x, prompt_masks):  # "object" exactly where the prompt says, whatever the image
        return torch.cat([-prompt_masks, prompt_masks], 1) * 10

    x = torch.rand(1, 3, 6, 8)
    prompt = torch.zeros(1, 1, 6, 8)
    prompt[..., :3] = 1  # an object in the left columns only
    with torch.no_grad():
        out = FlipTTAInferer([[1], [0]])(x, net, prompt_masks=prompt)
    torch.testing.assert_close(out.argmax(1, keepdim=True).float(), prompt)


def test_constant_slices_are_predicted_empty():
    from bundle.inferers import empty_if_constant

    vol = _smooth_volume(d=3)
    vol[..., 1] = 7.0  # one flat slice

    def network(x):  # foreground everywhere, whatever the input
        return torch.cat([torch.zeros_like(x[:, :1]), torch.ones_like(x[:, :1])], 1)

    out = SliceWiseInferer(input_size=64, slices_per_batch=2)(vol, network).argmax(1)
    assert out[..., 1].sum() == 0 and out[..., 0].all() and out[..., 2].all()
    logits = torch.ones(2, 2, 4, 4)
    assert torch.equal(empty_if_constant(torch.rand(2, 3, 4, 4), logits), logits)


def test_volume_with_nan_and_constant_volume(tmp_path):
    """One NaN voxel no longer blanks the volume (replaced by the finite minimum, reported with the
    file and count); an all-zero volume is reported and gives an empty mask."""
    from bundle.networks import BLOSAM

    torch.manual_seed(0)
    torch.save(BLOSAM("sam_tiny").state_dict(), tmp_path / "tiny.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    data = (_smooth_volume(40, 30, 3)[0, 0].numpy() * 1000 - 500).astype(np.float32)
    nan = data.copy()
    nan[np.unravel_index(np.argmin(data), data.shape)] = np.nan  # the finite minimum replaces it exactly
    for name, vol in (("clean", data), ("nan", nan), ("zeros", np.zeros_like(data))):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), inputs / f"{name}.nii.gz")
    out = tmp_path / "out"
    proc = _segment_volumes(inputs, out, tmp_path / "tiny.pt")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "nan.nii.gz: 1 NaN or infinite voxels replaced" in log
    assert "zeros.nii.gz: every voxel is 0" in log
    masks = {n: np.asarray(nib.load(out / f"{n}.nii.gz").dataobj) for n in ("clean", "nan", "zeros")}
    assert masks["clean"].any(), "the test model should find something on the clean volume"
    np.testing.assert_array_equal(masks["nan"], masks["clean"])
    assert not masks["zeros"].any()


def test_a_volume_too_large_for_memory_is_refused_naming_the_file(monkeypatch):
    """The prediction's memory is checked before it is allocated: a clear error naming the file
    instead of the kernel's silent out-of-memory kill."""
    from monai.data import MetaTensor

    import bundle.inferers

    vol = MetaTensor(_smooth_volume(d=4), meta={"filename_or_obj": "/data/ct/huge.nii.gz"})

    def network(x):
        return torch.cat([-x[:, :1], x[:, :1]], 1)

    monkeypatch.setattr(bundle.inferers, "available_memory", lambda: 90 * 60 * 4 * 23)  # needs 24 B/voxel
    with pytest.raises(BundleInputError, match=r"huge\.nii\.gz: a 90 x 60 x 4 volume needs about .* GiB"):
        SliceWiseInferer(input_size=64)(vol, network)
    monkeypatch.setattr(bundle.inferers, "available_memory", lambda: 90 * 60 * 4 * 24)
    assert SliceWiseInferer(input_size=64)(vol, network).shape == (1, 2, 90, 60, 4)


def test_available_memory_is_read_from_the_kernel():
    from bundle.inferers import available_memory

    available = available_memory()
    if Path("/proc/meminfo").exists():
        assert available is not None and 0 < available < 2**50


class _BoxEcho(torch.nn.Module):
    """A stand-in BLO-SAM: the prompt-free pass finds fixed parts of an object, a box prompt returns the box.

    Without a box the class-1 logit is +10 on ``found`` and -10 elsewhere; with boxes, one mask per box,
    +10 inside it. Records the boxes it was given."""

    def __init__(self, found: torch.Tensor) -> None:
        super().__init__()
        self.found, self.boxes_seen = found, []

    def encode(self, x):
        return x

    def learnt_prompt(self, batch, dtype):
        return torch.zeros(batch, 2, 4, dtype=dtype), torch.zeros(1, 4, 1, 1, dtype=dtype)

    def prompt_encoder(self, points=None, boxes=None, masks=None):
        self.boxes_seen.append(boxes.tolist())
        return boxes.reshape(-1, 1, 4), torch.zeros(1, 4, 1, 1)

    def decode(self, embeddings, sparse=None, dense=None):
        n, (h, w) = embeddings.shape[0], embeddings.shape[-2:]
        if sparse is None:
            fg = self.found.float().expand(n, 1, h, w) * 20 - 10
        else:
            fg = torch.full((n, 1, h, w), -10.0)
            for i, (x0, y0, x1, y1) in enumerate(sparse[:, 0].tolist()):
                fg[i, 0, int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = 10.0
        return torch.cat([torch.zeros_like(fg), fg], 1)

    def forward(self, x):
        return self.decode(self.encode(x))


def test_box_refinement_asks_for_each_kept_component_whole():
    """Two fragments of one object: each gets its box and the box masks replace the fragments; a fragment
    that the clean-up drops (under a quarter of the largest) gets none; off, the inferer is the flip TTA."""
    from bundle.inferers import BoxRefineInferer, FlipTTAInferer

    found = torch.zeros(32, 32, dtype=torch.bool)
    found[4:12, 4:10] = True  # 48 px
    found[20:26, 20:30] = True  # 60 px
    found[28:30, 2:4] = True  # 4 px: dropped by min_relative_size 0.25, so no box
    net, x = _BoxEcho(found), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(BoxRefineInferer([[1]], refine=False)(x, net), FlipTTAInferer([[1]])(x, net))
        out = BoxRefineInferer([], "trained", min_relative_size=0.25, min_area=4)(x, net)
    assert net.boxes_seen == [[[4.0, 4.0, 9.0, 11.0], [20.0, 20.0, 29.0, 25.0]]]
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[4:12, 4:10] = expected[20:26, 20:30] = True
    assert torch.equal(out.argmax(1)[0].bool(), expected)


def test_box_refinement_grows_boxes_and_leaves_an_empty_class_empty():
    from bundle.inferers import BoxRefineInferer

    found = torch.zeros(32, 32, dtype=torch.bool)
    found[10:20, 10:14] = True  # a box 4 wide, 10 high
    net = _BoxEcho(found)
    with torch.no_grad():
        out = BoxRefineInferer([], "trained", expand=0.5, min_area=4)(torch.rand(1, 3, 32, 32), net)
    assert net.boxes_seen == [[[9.0, 7.5, 14.0, 21.5]]]  # half of 0.5 x (4, 10) on each side
    assert out.argmax(1).sum() > found.sum()
    empty = _BoxEcho(torch.zeros(32, 32, dtype=torch.bool))
    with torch.no_grad():
        out = BoxRefineInferer([], "trained", min_area=4)(torch.rand(1, 3, 32, 32), empty)
    assert out.argmax(1).sum() == 0 and empty.boxes_seen == []
    with pytest.raises(ValueError, match="refine_box_expand"):
        BoxRefineInferer([], "trained", expand=2.0)
    with pytest.raises(ValueError, match="refine_boxes: use false"):
        BoxRefineInferer([], "maybe")
    with pytest.raises(ValueError, match="needs the released backbone"):
        BoxRefineInferer([], "pretrained")


def test_box_refinement_by_the_released_backbone_uses_its_single_mask_output():
    """``pretrained``: the boxes go to the refiner (the released backbone), whose SAM single-mask output (channel
    1) answers for every class, as in the zero-shot bound; the trained network only gives the first pass."""
    from bundle.inferers import BoxRefineInferer

    found = torch.zeros(32, 32, dtype=torch.bool)
    found[8:16, 8:12] = True
    net, refiner = _BoxEcho(found), _BoxEcho(torch.zeros(32, 32, dtype=torch.bool))
    with torch.no_grad():
        out = BoxRefineInferer([], "pretrained", refiner=refiner, min_area=4)(torch.rand(1, 3, 32, 32), net)
    assert net.boxes_seen == [] and refiner.boxes_seen == [[[8.0, 8.0, 11.0, 15.0]]]
    assert torch.equal(out.argmax(1)[0].bool(), found)


def test_box_refinement_runs_on_a_real_network_and_keeps_the_meta():
    """The tiny SAM backbone through the inferer: class count, grid and the input's meta (Invertd reads it)."""
    from monai.data import MetaTensor

    from bundle.inferers import BoxRefineInferer
    from bundle.networks import BLOSAM

    torch.manual_seed(0)
    net = BLOSAM("sam_tiny").eval()
    with torch.no_grad():
        net.mask_decoder.output_hypernetworks_mlps[1].layers[-1].bias.fill_(5.0)  # the first pass finds something
        x = MetaTensor(torch.rand(1, 3, net.input_size, net.input_size), meta={"filename_or_obj": "a.png"})
        refiner, calls = BLOSAM("sam_tiny").eval(), []
        decode = refiner.decode
        refiner.decode = lambda *a, **k: calls.append(a[0].shape[0]) or decode(*a, **k)
        out = BoxRefineInferer([[1]], "pretrained", refiner=refiner)(x, net)
        assert calls and BoxRefineInferer([[1]], "trained")(x, net).shape == out.shape  # the box pass ran
    assert out.shape == (1, 2, net.input_size, net.input_size)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.png"
    assert torch.isfinite(out).all()


def test_the_kvasir_preset_refines_with_the_released_backbone_and_plain_inference_does_not():
    """The preset's evaluation (and so its exported task's inference and MONAI Label's auto-segmentation, which
    carry ``refine_boxes``) builds the box pass with a second network from the backbone's own weights; a bundle
    without the setting builds neither."""
    from monai.bundle import ConfigParser

    from bundle.inferers import BoxRefineInferer
    from bundle.networks import BLOSAM

    configs = ROOT / "configs"
    for files, inferer_id, refine in (
        (["train.json", "datasets/kvasir.json"], "validate#inferer", "pretrained"),
        (["train.json"], "validate#inferer", None),
        (["inference.json"], "inferer", None),
    ):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        parser.update({"bundle_root": str(ROOT), "backbone": "sam_tiny", "device": "cpu"})
        inferer = parser.get_parsed_content(inferer_id)
        assert isinstance(inferer, BoxRefineInferer) and inferer.refine == refine, files
        assert isinstance(inferer.refiner, BLOSAM) if refine else inferer.refiner is None, files
        assert not inferer.refiner or not inferer.refiner.training  # the released decoder in eval mode
