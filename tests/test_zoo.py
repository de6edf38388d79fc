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
