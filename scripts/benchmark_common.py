"""Shared plumbing of the benchmark scripts: one subprocess per variant, one markdown table.

Each variant runs in a fresh process so its peak memory is its own; all variants run in one
invocation on one machine, so their ratios are comparable.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# the project root, so that `bundle` imports in a checkout that is not pip-installed (as the other scripts do)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_memory_mib(device: str) -> tuple[float, float | None]:
    """(peak resident memory of this process, peak CUDA memory allocated or None), in MiB."""
    import torch

    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, gpu


def clock(device: str) -> float:
    """``time.perf_counter()`` once the device's queued work is done (CUDA runs asynchronously)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def device_name(device: str) -> str:
    """The device a benchmark ran on, as its table names it: the GPU with its CUDA version, or the CPU."""
    import torch

    if device.startswith("cuda"):
        return f"GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_variants(script: str, variants: list[str], args: list[str]) -> list[dict]:
    """Run ``script --variant V args`` for each variant; each prints one JSON line last."""
    rows = []
    for variant in variants:
        cmd = [sys.executable, script, "--variant", variant, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"variant {variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    return rows


def write_table(path: str, title: str, intro: str, rows: list[dict], baseline: str) -> str:
    """A markdown table of seconds per step, ratio to ``baseline`` and peak memory; written to ``path``."""
    base = next(r for r in rows if r["variant"] == baseline)["seconds_per_step"]
    lines = [f"# {title}", "", intro, "",
             f"| variant | s / step | time vs {baseline} | peak RSS (MiB) | peak GPU (MiB) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        gpu = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        ratio = r["seconds_per_step"] / base
        cells = [r["variant"], f"{r['seconds_per_step']:.3f}", f"{ratio:.2f}x", f"{r['peak_rss_mib']:.0f}", gpu]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text
