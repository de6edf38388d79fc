"""Backbone registry: release-format checkpoints, clear errors, input-size changes."""

from __future__ import annotations

import pytest
import torch

from bundle.networks.backbones import BACKBONES, build_backbone, build_sam_parts, sam_state_dict


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam_state_dict(build_sam_parts("sam_tiny")), path)
    return path


def test_release_format_checkpoint_round_trips(tiny_checkpoint):
    saved = torch.load(tiny_checkpoint, weights_only=True)
    assert {k.split(".")[0] for k in saved} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    loaded = sam_state_dict(build_backbone("sam_tiny", tiny_checkpoint))
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_sam_release_buffers_are_accepted(tiny_checkpoint, tmp_path):
    # SAM's released files also hold pixel_mean / pixel_std buffers of the Sam module
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["pixel_mean"], state["pixel_std"] = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    torch.save(state, tmp_path / "with_buffers.pth")
    build_backbone("sam_tiny", tmp_path / "with_buffers.pth")


def test_litemedsam_loads_strictly_from_its_package():
    parts = build_backbone("litemedsam")
    assert parts.input_size == 256 and parts.normalization == "minmax"
    assert sum(p.numel() for p in parts.image_encoder.parameters()) > 5_000_000


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown backbone 'vit_x'.*litemedsam"):
        build_backbone("vit_x")


def test_missing_sam_checkpoint_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_large_files"):
        build_backbone("vit_b")
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*download_large_files"):
        build_backbone("vit_b", tmp_path / "nope.pth")


def test_checkpoint_of_another_backbone_is_rejected(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"sam_tiny\.pth does not match backbone 'litemedsam'"):
        build_backbone("litemedsam", tiny_checkpoint)


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth could not be read"):
        build_backbone("sam_tiny", bad)


def test_other_input_size_interpolates_positional_tables(tiny_checkpoint):
    parts = build_backbone("sam_tiny", tiny_checkpoint, input_size=512)
    with torch.no_grad():
        emb = parts.image_encoder(torch.randn(1, 3, 512, 512))
    assert emb.shape == (1, 256, 32, 32)
    with pytest.raises(ValueError, match="only accepts input_size 256"):
        build_backbone("litemedsam", input_size=512)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_b"])
def test_sam_vit_release_format_round_trip(name, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / f"sam_{name}.pth"
    torch.save(sam_state_dict(build_sam_parts(name)), path)
    parts = build_backbone(name, path, input_size=256)  # SAMed-style smaller input
    with torch.no_grad():
        assert parts.image_encoder(torch.randn(1, 3, 256, 256)).shape == (1, 256, 16, 16)
    assert set(BACKBONES) >= {"vit_b", "vit_l", "vit_h", "litemedsam"}
