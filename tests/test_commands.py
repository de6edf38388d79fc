"""Running the bundle's own commands in a subprocess (used by experiments, figures and export)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundle.commands import bundle_args, merged_config, run_bundle

ROOT = Path(__file__).resolve().parents[1]


def test_bundle_args_pass_non_strings_as_json():
    args = bundle_args("run training", ["a.json", Path("b.json")], {"shots": 4, "seed": 0, "backbone": "vit_b"})
    assert args == ["run", "training", "--config_file", json.dumps(["a.json", "b.json"]),
                    "--shots", "4", "--seed", "0", "--backbone", "vit_b"]  # fmt: skip


def test_a_none_override_reaches_the_config(tmp_path):
    """``monai.bundle run --key None`` leaves the config's value (MONAI drops None-valued arguments), so a
    None override is passed as the expression ``$None``; checked through the real command."""
    assert bundle_args("run", ["a.json"], {"postprocess_components": None})[-2:] == [
        "--postprocess_components",
        "$None",
    ]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"components": 1, "run": ["$print('components is', repr(@components))"]}))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *bundle_args("run", [config], {"components": None})],
                          cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "components is None" in proc.stdout


def test_merged_config_merges_files_in_order_then_applies_overrides(tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps({"shots": 2, "optim": {"lr": 0.1, "wd": 0.0}, "seed": 0}))
    second.write_text(json.dumps({"shots": 4, "optim": {"lr": 0.01}}))
    merged = merged_config([first, str(second)], {"seed": 3, "optim#wd": 0.5})
    assert merged.pop("_meta_") == {}  # MONAI's parser always adds an (empty) metadata section
    # a later file replaces a top-level key as a whole; an '#' override sets one nested value
    assert merged == {"shots": 4, "optim": {"lr": 0.01, "wd": 0.5}, "seed": 3}


@pytest.mark.slow  # three verify_metadata processes (about 40 s); tests/test_zoo.py runs the same commands
def test_run_bundle_returns_output_and_names_the_failing_command(tmp_path):
    schema = tmp_path / "schema.json"
    shutil.copy(ROOT / "tests" / "fixtures" / "meta_schema_20240725.json", schema)
    out = run_bundle(["verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(schema)], ROOT)
    assert "verified with no error" in out
    broken = tmp_path / "metadata.json"
    broken.write_text("{}")
    with pytest.raises(RuntimeError, match=r"monai.bundle verify_metadata --meta_file .* failed in"):
        run_bundle(["verify_metadata", "--meta_file", str(broken), "--filepath", str(schema)], ROOT)
    log = tmp_path / "log.txt"
    with open(log, "w") as f, pytest.raises(RuntimeError, match="see .*log.txt"):
        run_bundle(["verify_metadata", "--meta_file", str(broken), "--filepath", str(schema)], ROOT, log=f)
    assert "Traceback" in log.read_text() or "Error" in log.read_text()


def test_sigterm_on_a_runner_stops_the_command_it_started(tmp_path):
    """A runner stopped with ``kill`` leaves no orphaned child (its training would go on for minutes)."""
    pid_file = tmp_path / "child.pid"
    child = tmp_path / "child.py"
    child.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    runner = tmp_path / "runner.py"
    runner.write_text(
        "import subprocess, sys\n"
        "from bundle.commands import exit_on_sigterm\n"
        "exit_on_sigterm()\n"
        f"subprocess.run([sys.executable, {str(child)!r}], check=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(runner)], env=env)
    deadline = time.monotonic() + 180  # the runner imports torch first: slow on a loaded 2-core machine
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # killed and reaped by the runner on its way out
        os.kill(child_pid, 0)
