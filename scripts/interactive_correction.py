"""Which way of joining a user's box or click to the learnt prompt corrects a trained task best?

On the test cases a trained few-shot run segments worst (its evaluation's per-case Dice), each variant of
the interactive model (``configs/interactive.json``, :class:`bundle.interactive.PromptedInferer`) gets the
ground truth's bounding box, or one foreground click at the truth's median pixel, and is scored by Dice
at the original resolution:

- ``auto``: the learnt prompt alone (what the task's auto-segmentation gives);
- ``box, added``: SAM's box tokens after the learnt sparse tokens; ``box, replacing``: in their place
  (the learnt dense prompt kept); each with and without clearing the class outside the box;
- ``box clearing outside only``: the learnt prompt alone, the class cleared outside the box;
- ``click, added``: one foreground click after the learnt tokens.

    python scripts/interactive_correction.py --dataset kvasir --run runs/kvasir/4shot/seed0/blo-sam \\
        --cases_csv runs/kvasir/4shot/seed0/blo-sam/eval/val_mean_dice_raw.csv --worst 8 \\
        --cache_dir runs/embeddings --out docs/results/interactive_correction_kvasir.md
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {  # name -> (prompt kind, PromptedInferer options)
    "auto": ("none", {}),
    "box, added": ("box", {"box": "add", "clip_to_box": False}),
    "box, added, cleared outside": ("box", {"box": "add", "clip_to_box": True}),
    "box, replacing": ("box", {"box": "replace", "clip_to_box": False}),
    "box, replacing, cleared outside": ("box", {"box": "replace", "clip_to_box": True}),
    "box clearing outside only": ("box", {"box": "clip"}),
    "click, added": ("click", {}),
}


def truth(item: dict, size: tuple[int, int]) -> np.ndarray:
    """The union of an item's mask files (> 127) at ``size`` (width, height), rows first."""
    labels = item["label"] if isinstance(item["label"], (list, tuple)) else [item["label"]]
    masks = [np.asarray(Image.open(p).convert("L").resize(size, Image.NEAREST)) > 127 for p in labels]
    return np.logical_or.reduce(masks)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="preset name in configs/datasets/ (jsrt, kvasir, dental)")
    parser.add_argument("--dataset_dir", help="the data set folder (default: ../shared/data/<preset folder>)")
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder (models/model.pt)")
    parser.add_argument("--cases_csv", type=Path, help="per-case Dice (default: <run>/eval/val_mean_dice_raw.csv)")
    parser.add_argument("--worst", type=int, default=8)
    parser.add_argument("--cache_dir", help="embedding cache folder (the grid's), to skip encoder passes")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from monai.bundle import ConfigParser
    from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd

    from bundle.export import inference_config, task_settings
    from bundle.interactive import PromptedInferer
    from bundle.networks import EmbeddingCache

    configs = [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / f"{args.dataset}.json")]
    folders = {"jsrt": "jsrt", "kvasir": "kvasir-seg", "dental": "dental"}
    dataset_dir = args.dataset_dir or str(ROOT.parent / "shared" / "data" / folders.get(args.dataset, args.dataset))
    train = ConfigParser()
    train.read_config(configs)
    train.update({"dataset_dir": dataset_dir, "embedding_cache_dir": None})
    items = {str(Path(i["image"]).resolve()): i for i in train.get_parsed_content("datalist")}

    config = ConfigParser(inference_config(task_settings(configs), interactive=True))
    config.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')"})
    net = config.get_parsed_content("network_def")
    net.load_state_dict(torch.load(args.run / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    net.embedding_cache = EmbeddingCache(args.cache_dir, max_items=8)
    pre = config.get_parsed_content("preprocessing")
    post = Compose([Activationsd("pred", softmax=True),
                    Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False),
                    AsDiscreted("pred", argmax=True)])  # fmt: skip
    size, upright = int(config.get_parsed_content("input_size")), bool(config.get_parsed_content("upright"))

    with open(args.cases_csv or args.run / "eval" / "val_mean_dice_raw.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: float(r["mean"]))[: args.worst]
    scores: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for row in rows:
        item = items[str(Path(row["filename"]).resolve())]
        width, height = Image.open(item["image"]).size
        gt = truth(item, (width, height))
        ys, xs = np.nonzero(gt)
        prompts = {"none": {}, "box": {"roi": [int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max()), 0, 0]},
                   "click": {"foreground": [[int(np.median(xs)), int(np.median(ys)), 0]]}}  # fmt: skip
        for name, (kind, options) in VARIANTS.items():
            data = pre({"image": item["image"], **prompts[kind]})
            with torch.no_grad():
                data["pred"] = PromptedInferer(size, upright, **options)(data["image"][None], net)[0]
            mask = np.asarray(post(data)["pred"])[0].T > 0  # MONAI's (x, y) array -> rows first
            scores[name].append(dice(mask, gt))
        print(Path(item["image"]).name, {k: round(v[-1], 3) for k, v in scores.items()}, flush=True)

    lines = [f"# Interactive correction: {args.dataset}, the {len(rows)} worst test cases of `{args.run.name}`", "",
             f"Run: `{args.run}` (its evaluation's per-case Dice picks the {len(rows)} worst). A box is the ground "
             "truth's bounding box; a click is one foreground point at the truth's median pixel. Dice at original "
             f"resolution, mean over the cases. CPU, {os.cpu_count()} cores. Script: `scripts/interactive_correction.py`.",
             "", "| variant | Dice |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {np.mean(v):.4f} |" for name, v in scores.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
