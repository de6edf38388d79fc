"""Benchmark: seconds per image of inference, from the bare forward to the command line and MONAI Label.

On the same images and one checkpoint (a ``BLOSAM(...).state_dict()`` exported as a task, so the
command line and the server run the same ``configs/inference.json``), in one invocation, each variant
in its own process:

- ``bare``: the encoder plus decoder forward on the preprocessed tensors, batch 1 (this machine's
  floor), and the decoder alone (what a request on an image already seen should cost);
- ``cli_bN``: ``python -m monai.bundle run`` on the task's ``configs/inference.json`` with
  ``--batch_size N`` (read, preprocess, encode, decode, invert, write), timed from inside: process
  start-up, workflow set-up (config, network) and checkpoint loading are reported apart from the
  per-image time (the first batch apart too; images per second from the later batches);
- ``server``: MONAI Label (``scripts/monailabel_app.sh``, ``POST /infer/<task>``) on the same images:
  the first request (loads the model), warm requests on new images, and repeated requests on images
  already seen (the bundle's in-memory embedding cache: a decoder pass only).

    python scripts/benchmark_inference.py --images /work/shared/data/jsrt/images --n_images 16 \\
        --out docs/results/benchmark_inference.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_common import clock, device_name  # also puts the project root on sys.path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/train.json", "configs/datasets/jsrt.json"]


def _images(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(files) < n:
        raise SystemExit(f"{folder}: {len(files)} images, {n} asked for")
    return files[:n]


def prepare(work: Path, images: list[Path], backbone: str) -> Path:
    """A checkpoint of BLOSAM(backbone) exported as the task ``work/dist/bench``; the images in ``work/studies``."""
    import torch

    from bundle.networks import BLOSAM

    torch.manual_seed(0)
    net = BLOSAM(backbone, num_classes=1, prompt="tokens", prompt_tokens=2)
    torch.save(net.state_dict(), work / "model.pt")
    cmd = [sys.executable, str(ROOT / "scripts" / "export.py"), "--name", "bench", "--ckpt", str(work / "model.pt"),
           "--config_file", *CONFIGS, "--out", str(work / "dist"), "--no_torchscript", "--no_onnx", "--no_zip"]  # fmt: skip
    if backbone != "litemedsam":
        cmd += ["--set", "backbone", json.dumps(backbone)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    (work / "studies").mkdir(exist_ok=True)
    for p in images:
        shutil.copy(p, work / "studies" / p.name)
    return work / "dist" / "bench"


def run_bare(task: Path, studies: Path, repeats: int, device: str) -> dict:
    """Encoder+decoder forward per image (batch 1) and decoder alone, on the preprocessed tensors."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(task / "configs" / "inference.json"))
    parser.update({"bundle_root": str(task), "input_dir": str(studies), "device": f"$torch.device({device!r})"})
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(task / "models" / "model.pt", map_location=device, weights_only=True))
    net.embedding_cache = None
    net.eval()
    pre = parser.get_parsed_content("preprocessing")
    tensors = [pre(d)["image"].as_tensor()[None].to(device) for d in parser.get_parsed_content("inputs")]

    with torch.no_grad():
        net(tensors[0])  # warm-up
        forward, decode = [], []
        for _ in range(repeats):
            for x in tensors:
                start = clock(device)
                emb = net.encode(x)
                mid = clock(device)
                net.decode(emb)
                end = clock(device)
                forward.append(end - start)
                decode.append(end - mid)
    return {"variant": "bare", "forward_s": statistics.median(forward), "decode_s": statistics.median(decode),
            "n": len(forward)}  # fmt: skip


def run_cli(task: Path, studies: Path, out: Path, batch: int, t_launch: float, device: str) -> dict:
    """``python -m monai.bundle run`` (the same ConfigWorkflow it builds), with ignite timestamps."""
    t_main = time.time()
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    t_imports = time.time()
    workflow = ConfigWorkflow(config_file=str(task / "configs" / "inference.json"), workflow_type="infer",
                              bundle_root=str(task), input_dir=str(studies), output_dir=str(out), batch_size=batch,
                              device=f"$torch.device({device!r})")  # fmt: skip
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")
    t_setup = time.time()
    stamps: dict[str, list[float]] = {"started": [], "iteration": [], "sizes": []}
    evaluator.add_event_handler(Events.ITERATION_STARTED, lambda e: stamps["started"].append(time.time()))

    def done(engine) -> None:
        stamps["iteration"].append(time.time())
        stamps["sizes"].append(len(engine.state.output))

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, done)
    workflow.run()
    workflow.finalize()
    t_end = time.time()
    n = sum(stamps["sizes"])
    later = sum(stamps["sizes"][1:])
    first = stamps["iteration"][0] - stamps["started"][0]
    steady = (stamps["iteration"][-1] - stamps["iteration"][0]) / later if later else first / stamps["sizes"][0]
    return {"variant": f"cli_b{batch}", "batch": batch, "n": n, "python_start_s": t_main - t_launch,
            "imports_s": t_imports - t_main, "setup_s": t_setup - t_imports,
            "ckpt_load_s": stamps["started"][0] - t_setup, "first_batch_s": first, "per_image_s": steady,
            "run_s": t_end - t_setup, "total_s": t_end - t_launch, "written": len(list(out.glob("*.png")))}  # fmt: skip


def _timed(server, model: str, image_id: str, params: dict | None = None) -> float:
    start = time.perf_counter()
    server.infer(model, image_id, ".png", params)
    return time.perf_counter() - start


def _centre_box(image: Path) -> dict:
    """A box over the middle half of an image and a click at its centre, as 3D Slicer sends them
    (voxel indices: i column, j row, k slice)."""
    from PIL import Image

    w, h = Image.open(image).size
    return {"roi": [w // 4, 3 * w // 4, h // 4, 3 * h // 4, 0, 0], "click": [[w // 2, h // 2, 0]]}


def run_server(task: Path, studies: Path, work: Path, repeats: int) -> dict:
    """MONAI Label through scripts/monailabel_app.sh: first request, warm new images, repeated images,
    then a box and a click per image with the task's interactive model (images already seen)."""
    from bundle.serving import monailabel_server

    images = sorted(p for p in studies.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    ids = [p.stem for p in images]
    edit = f"{task.name}_deepgrow"
    with monailabel_server(task, studies, work / "server.log", work / "ml") as server:
        first = _timed(server, task.name, ids[0])
        warm = [_timed(server, task.name, i) for i in ids[1:]]
        seen = [_timed(server, task.name, i) for _ in range(repeats) for i in ids]
        prompts = {i: _centre_box(p) for i, p in zip(ids, images, strict=True)}
        boxes = [_timed(server, edit, i, {"roi": prompts[i]["roi"]}) for _ in range(repeats) for i in ids]
        clicks = [_timed(server, edit, i, {"foreground": prompts[i]["click"], "background": []})
                  for _ in range(repeats) for i in ids]  # fmt: skip
    return {"variant": "server", "startup_s": server.startup_s, "first_s": first,
            "warm_s": statistics.median(warm), "warm_all": warm, "seen_s": statistics.median(seen),
            "box_s": statistics.median(boxes), "click_s": statistics.median(clicks), "n": len(ids),
            "box_mode": json.loads((task / "configs" / "interactive.json").read_text()).get("interactive_box")}  # fmt: skip


def _child(args: argparse.Namespace, variant: str, **extra: str) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--work", str(args.work), "--repeats", str(args.repeats),
           "--device", args.device]  # fmt: skip
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(row, flush=True)
    return row


def table(args: argparse.Namespace, rows: dict, load: tuple[float, float, float], n: int) -> str:
    import torch

    bare = rows["bare"]["forward_s"]
    clis = [r for k, r in rows.items() if k.startswith("cli_b")]
    best = min(clis, key=lambda r: r["per_image_s"])

    def line(name: str, seconds: float, note: str) -> str:
        return f"| {name} | {seconds:.3f} | {seconds / bare:.2f}x | {note} |"

    intro = (
        f"{n} images from `{args.images}` (the first {n} in name order), backbone `{args.backbone}`, one "
        "checkpoint made from `BLOSAM(...).state_dict()` and exported as a task (JSRT preset: mask clean-up on), "
        "so the command line and MONAI Label run the same `configs/inference.json`. "
        f"{device_name(args.device)} ({os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}`"
        f"{', run under `nice`' if os.nice(0) > 0 else ''}), **load average {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f}** (1/5/15 min) at the start (above 0 when other jobs ran, or had just ended: absolute "
        "times are then inflated; a few percent between rows is noise); compare ratios. Bare rows: medians over "
        "the images (after one warm-up forward). Command-line rows (a fresh "
        "process building the `ConfigWorkflow` that `python -m monai.bundle run` builds, timed by ignite events): seconds "
        "per image over the batches after the first (the first batch, with one-time warm-up, is in the second "
        "table). Server rows: the first request after start-up; the median of the requests on the other (new) "
        "images; the median of a second request on every image (an auto-segmentation again: the learnt prompt, "
        "not a user's box); then the task's interactive model (`<task>_deepgrow`) on every image, already seen "
        "by the auto-segmentation model (the two share the process's embedding cache): a box over the image's "
        "middle half, then one foreground click at its centre. The seen-image rows rely on the in-memory "
        "embedding cache that `configs/inference.json` keeps (`embedding_cache_items`, 32 embeddings of 4 MiB "
        "at most; 0 turns it off). Targets (issue 18): "
        "server auto-segmentation at most 1.5x the bare forward; a correction on a seen image under 0.3 s. "
        "Script: `scripts/benchmark_inference.py`."
    )
    lines = ["# Inference latency", "", intro, "",
             "| path | s / image | vs bare forward | what is in it |", "|---|---|---|---|",
             line("bare encoder + decoder forward (batch 1)", bare, "preprocessed tensor in, logits out: the floor"),
             line("bare decoder only", rows["bare"]["decode_s"], "an image already encoded")]  # fmt: skip
    for r in clis:
        note = f"`monai.bundle run`, batch {r['batch']}: read, preprocess, encode, decode, invert, clean-up, write"
        if r is best:
            note += " (best batch size)"
        lines.append(line(f"command line, batch {r['batch']}", r["per_image_s"], note))
    if "server" in rows:
        s = rows["server"]
        lines += [
            line("MONAI Label `POST /infer`, first request", s["first_s"], "loads the model, then one image"),
            line("MONAI Label `POST /infer`, warm, new image", s["warm_s"], "HTTP, read, encode, decode, write"),
            line("MONAI Label `POST /infer`, image already seen", s["seen_s"], "embedding cache hit: decoder only"),
        ]
        if "box_s" in s:
            lines += [
                line("MONAI Label `POST /infer/<task>_deepgrow`, box on a seen image", s["box_s"],
                     f"interactive correction (the preset's `interactive_box`: `{s.get('box_mode')}`), decoder only"),
                line("MONAI Label `POST /infer/<task>_deepgrow`, click on a seen image", s["click_s"],
                     "interactive correction: learnt prompt + one foreground click, decoder only"),
            ]  # fmt: skip
    lines += ["", "Fixed costs of one command-line run (seconds, not per image):", "",
              "| batch | python start | imports | config + network | checkpoint load | first batch | whole run |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in clis:
        cells = [r["python_start_s"], r["imports_s"], r["setup_s"], r["ckpt_load_s"], r["first_batch_s"], r["total_s"]]
        lines.append(f"| {r['batch']} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    if "server" in rows:
        lines += [
            "",
            f"MONAI Label server start-up to `GET /info/` listing the task: {rows['server']['startup_s']:.1f} s.",
        ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_images = Path("/work/shared/data/jsrt/images")
    if not default_images.is_dir():
        default_images = ROOT / "bundle" / "sample_data" / "jsrt" / "images"
    parser.add_argument("--images", type=Path, default=default_images)
    parser.add_argument("--n_images", type=int, default=8)
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no_server", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the bare and command-line rows")
    parser.add_argument("--out", default="docs/results/benchmark_inference.md")
    parser.add_argument("--rows", type=Path, help="rewrite the table from a run's printed rows (its log) and load")
    parser.add_argument("--load", type=float, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--t_launch", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        task, studies = args.work / "dist" / "bench", args.work / "studies"
        if args.variant == "bare":
            row = run_bare(task, studies, args.repeats, args.device)
        elif args.variant == "cli":
            row = run_cli(task, studies, args.work / f"out_b{args.batch}", args.batch, args.t_launch, args.device)
        else:
            row = run_server(task, studies, args.work, args.repeats)
        print(json.dumps(row))
        return
    if args.rows:  # the rows a run printed, one Python dict a line
        import ast

        rows = [ast.literal_eval(x) for x in args.rows.read_text().splitlines() if x.startswith("{'variant'")]
        print(table(args, {r["variant"]: r for r in rows}, tuple(args.load), rows[-1]["n"]))
        return
    load = os.getloadavg()
    images = _images(args.images, args.n_images)
    with tempfile.TemporaryDirectory(prefix="blosam-bench-infer-") as tmp:
        args.work = Path(tmp)
        prepare(args.work, images, args.backbone)
        rows = {"bare": _child(args, "bare")}
        for batch in args.batches:
            rows[f"cli_b{batch}"] = _child(args, "cli", batch=batch, t_launch=time.time())
        if not args.no_server:
            try:
                rows["server"] = _child(args, "server")
            except Exception as err:  # the MONAI Label environment is optional
                print(f"server: skipped ({err})", file=sys.stderr)
    print(table(args, rows, load, len(images)))


if __name__ == "__main__":
    main()
