"""End to end with the real MONAI Label server: an exported task bundle as a `monaibundle` model.

Starts ``monailabel start_server`` (through ``scripts/monailabel_app.sh``) on 127.0.0.1 with a
bundle trained on the shipped JSRT sample (lungs, 4 shots, 40 iterations), asks ``GET /info/``
until our model and its label are
listed, segments a study with ``POST /infer/<model>?image=<id>&output=image`` and checks the mask:
the image's size, labels {0, 1}, Dice against the ground truth, and the same mask as our own
inference command gives. The server runs in its own process group, is killed however the test
ends, and writes only inside the test's temporary folder.

MONAI Label lives in its own environment (numpy pin): ``MONAILABEL_PYTHON`` or
``.monailabel-venv/bin/python``; without one the test skips. See docs/monailabel.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bundle" / "sample_data" / "jsrt"
MONAILABEL_PYTHON = Path(os.environ.get("MONAILABEL_PYTHON", ROOT / ".monailabel-venv" / "bin" / "python"))
MODEL = "jsrt_sample"
DICE_FLOOR = 0.7  # 4 shots, 40 iterations on the downsized sample: validation Dice about 0.88 at 30
CONFIGS = ["configs/train.json", "configs/datasets/jsrt.json"]


def _run(*args: str) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.mark.slow
def test_monailabel_server_segments_a_study_with_the_exported_bundle(tmp_path):
    if not MONAILABEL_PYTHON.is_file():
        pytest.skip(
            f"MONAI Label environment not found at {MONAILABEL_PYTHON} "
            "(set MONAILABEL_PYTHON; docs/monailabel.md)"
        )
    # a small trained task bundle
    _run("-m", "monai.bundle", "run", "training", "--config_file", json.dumps(CONFIGS),
         "--dataset_dir", str(SAMPLE), "--test_size", "6", "--val_size", "4", "--shots", "4",
         "--iterations", "40", "--val_interval", "10", "--flip_prob", "0.0", "--ckpt_dir", str(tmp_path / "models"),
         "--output_dir", str(tmp_path / "train"), "--embedding_cache_dir", str(tmp_path / "cache"))  # fmt: skip
    _run("scripts/export.py", "--name", MODEL, "--ckpt", str(tmp_path / "models" / "model.pt"), "--config_file",
         *CONFIGS, "--out", str(tmp_path / "dist"), "--no_torchscript", "--no_onnx", "--no_zip")  # fmt: skip
    task = tmp_path / "dist" / MODEL

    # a study: a test image of the sample (the split's test part: never trained or validated on)
    studies = tmp_path / "studies"
    studies.mkdir()
    case = sorted(p for p in (SAMPLE / "images").iterdir())[-1]
    shutil.copy(case, studies / case.name)
    image_id = case.stem

    # our own inference command, in the exported folder, on the same image
    ours = tmp_path / "ours"
    _run("-m", "monai.bundle", "run", "--config_file", str(task / "configs" / "inference.json"),
         "--bundle_root", str(task), "--input_dir", str(studies), "--output_dir", str(ours))  # fmt: skip
    own_mask = np.asarray(Image.open(ours / f"{image_id}.png"))

    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(["bash", str(ROOT / "scripts" / "monailabel_app.sh"), str(task), str(studies),
                               str(port), str(tmp_path / "monailabel")],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env=dict(os.environ, MONAILABEL_PYTHON=str(MONAILABEL_PYTHON)))  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        info, deadline = None, time.time() + 600
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-4000:]
            try:
                info = _get(f"{base}/info/")
                if MODEL in info.get("models", {}):
                    break
            except OSError:
                pass
            time.sleep(2)
        assert info and MODEL in info["models"], (tmp_path / "server.log").read_text()[-4000:]
        assert info["models"][MODEL]["labels"] == {"lung": 1}
        assert info["models"][MODEL]["dimension"] == 2

        query = urllib.parse.urlencode({"image": image_id, "output": "image"})
        body = urllib.parse.urlencode({"params": json.dumps({"result_extension": ".png"})}).encode()
        start = time.time()
        with urllib.request.urlopen(
            urllib.request.Request(f"{base}/infer/{MODEL}?{query}", data=body), timeout=600
        ) as r:
            payload, content_type = r.read(), r.headers.get("content-type")
        seconds = time.time() - start
        mask_file = tmp_path / "monailabel_mask.png"
        mask_file.write_bytes(payload)
        mask = np.asarray(Image.open(mask_file))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()

    image = np.asarray(Image.open(case))
    size = (image.shape[1], image.shape[0])
    lungs = [Image.open(SAMPLE / "masks" / side / f"{image_id}.gif").convert("L").resize(size, Image.NEAREST)
             for side in ("left_lung", "right_lung")]  # fmt: skip
    truth = np.logical_or(*[np.asarray(m) > 127 for m in lungs])
    dice = _dice(mask > 0, truth)
    assert content_type == "image/png"
    print(f"MONAI Label /infer/{MODEL}?image={image_id}: {content_type}, {len(payload)} bytes, mask {mask.shape} "
          f"{mask.dtype} labels {sorted(np.unique(mask).tolist())}, Dice {dice:.4f}, "
          f"agreement with our inference {np.mean((mask > 0) == (own_mask > 0)):.6f}, {seconds:.1f} s")  # fmt: skip
    assert mask.shape == image.shape[:2]
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert dice > DICE_FLOOR
    np.testing.assert_array_equal(mask > 0, own_mask > 0)
