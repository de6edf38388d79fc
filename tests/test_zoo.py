"""Model Zoo format: the bundle commands that check metadata and the network's in/out shapes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# MONAI's bundle metadata schema (Apache-2.0), the file `schema` in metadata.json points to: a copy
# so the check runs offline (verify_metadata skips the download when the file exists)
SCHEMA = ROOT / "tests" / "fixtures" / "meta_schema_20240725.json"


def _bundle(*args: str, cwd: Path = ROOT) -> str:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_verify_metadata_against_the_schema(tmp_path):
    schema = tmp_path / SCHEMA.name
    shutil.copy(SCHEMA, schema)
    out = _bundle("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(schema))
    assert "metadata is verified with no error" in out
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] and all(0 < v < 1 for v in meta["eval_metrics"].values())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["0"] == "background"


def test_verify_metadata_rejects_a_broken_file(tmp_path):
    schema = tmp_path / SCHEMA.name
    shutil.copy(SCHEMA, schema)
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(bad),
                           "--filepath", str(schema)], cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "network_data_format" in proc.stdout + proc.stderr


def test_verify_net_in_out_with_the_inference_config():
    out = _bundle("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                  "--config_file", "configs/inference.json")  # fmt: skip
    assert "data shape of network is verified with no error" in out


def _requested_downloads(monkeypatch, bundle_path: Path) -> list[dict]:
    """What ``download_large_files --bundle_path <bundle_path>`` asks MONAI's ``download_url`` for."""
    import monai.bundle.scripts

    requested = []
    monkeypatch.setattr(monai.bundle.scripts, "download_url", lambda **kwargs: requested.append(kwargs))
    monai.bundle.scripts.download_large_files(bundle_path=str(bundle_path))
    return requested


def test_download_large_files_at_the_root_fetches_the_trained_weights_only(monkeypatch):
    requested = _requested_downloads(monkeypatch, ROOT)
    assert [Path(r["filepath"]).resolve() for r in requested] == [ROOT / "models" / "model.pt"]
    assert requested[0]["url"].startswith("https://") and requested[0]["url"].endswith("/model.pt")
    assert not any("sam_vit" in r["url"] for r in requested), "a plain zoo run must not fetch 4 GB of SAM"


def test_download_large_files_in_models_fetches_the_sam_checkpoints(monkeypatch):
    requested = _requested_downloads(monkeypatch, ROOT / "models")
    by_path = {Path(r["filepath"]).resolve(): r for r in requested}
    # where the README's --backbone_checkpoint looks for them, with the release's md5
    releases = ("sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth")
    assert set(by_path) == {ROOT / "models" / f for f in releases}
    vit_b = by_path[ROOT / "models" / "sam_vit_b_01ec64.pth"]
    assert vit_b["hash_val"] == "01ec64d29a2fca3f0661936605ae66f8" and vit_b["hash_type"] == "md5"
    assert vit_b["url"] == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"


def test_inference_config_has_the_properties_the_zoo_checks_for_its_supported_apps(tmp_path):
    """The zoo checks the inference workflow's properties once ``supported_apps`` names an app
    (ci/verify_bundle.py ``verify_bundle_properties``); here with MONAI's own property lists."""
    from monai.bundle import create_workflow
    from monai.bundle.properties import InferProperties, MetaProperties

    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert meta["supported_apps"], "an empty supported_apps skips the zoo's property check"
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    ckpt = tmp_path / "model.pt"  # the zoo has fetched models/model.pt (large_files.yml) by then
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    workflow = create_workflow(
        workflow_type="inference",
        bundle_root=str(ROOT),
        config_file=str(ROOT / "configs" / "inference.json"),
        meta_file=str(ROOT / "configs" / "metadata.json"),
        logging_file=str(ROOT / "configs" / "logging.conf"),
        ckpt=str(ckpt),
    )
    workflow.properties = {**MetaProperties, **InferProperties}
    assert not workflow.check_properties()


def test_inference_reads_dataset_dir_and_input_dir_still_overrides_it(tmp_path):
    from monai.bundle import ConfigParser

    def input_dir(**overrides) -> str:
        parser = ConfigParser()
        parser.read_config(str(ROOT / "configs" / "inference.json"))
        parser.update(overrides)
        return parser.get_parsed_content("input_dir")

    assert Path(input_dir()).resolve() == ROOT / "bundle" / "sample_data" / "kvasir" / "images"
    assert input_dir(dataset_dir=str(tmp_path)) == str(tmp_path)
    assert input_dir(dataset_dir="/elsewhere", input_dir=str(tmp_path)) == str(tmp_path)
