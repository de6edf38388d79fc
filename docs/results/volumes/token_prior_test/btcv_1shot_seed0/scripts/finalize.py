"""Score whatever passes of a volume run are complete over all 20 test volumes, sum the part timings, write
<pass>_scores.json and a run record (done.json when plain, size and token passes all finished; else record.json)."""
import json, sys
from pathlib import Path
sys.path.insert(0, "/work/main")
from bundle.experiments.volumes import VOLUME_DATASETS, score_folder

folder = Path(sys.argv[1])
data = VOLUME_DATASETS["btcv"]
images = Path(json.loads((folder / "command.json").read_text())["pred"]["overrides"]["input_dir"])
ids = sorted(p.name[: -len(".nii.gz")] for p in images.glob("*.nii.gz"))
paired = [i for i in ids if all((folder / s / f"{i}.nii.gz").is_file() for s in ("pred", "pred_tokens"))]
print(f"both passes on {len(paired)} of {len(ids)} test volumes: {paired[0]} .. {paired[-1]}")
ids = paired  # score plain and token prior on the same volumes (the first n sorted: both passes go in order)
items = [{"id": i, "label": str(images.parent / "labels" / f"{i}.nii.gz")} for i in ids]
record = {"scored_volumes": ids, "run": {"dataset": "btcv", "shots": 1, "seed": int(folder.parent.name[4:]), "variant": "blo-sam"},
          "test_volumes": len(items)}
for stage in ("training", "pred", "pred_size", "pred_tokens"):
    usages = sorted(folder.glob(f"{stage}.usage")) + sorted(folder.glob(f"{stage}_[a-z].usage"))
    if not usages and (stage == "training" or not (folder / stage).is_dir()):
        continue
    # a pass stopped before its end (the session's time ran out) wrote no usage file: no time for it
    entry = {"seconds": 0.0 if usages else None, "peak_rss_mib": 0.0 if usages else None, "parts": len(usages)}
    for u in usages:
        if len(u.read_text().split()) < 2:  # a part still running, or stopped: its time is unknown
            entry["parts_without_time"] = entry.get("parts_without_time", 0) + 1
            continue
        peak, wall = u.read_text().split()[-2:]
        entry["seconds"] += float(wall)
        entry["peak_rss_mib"] = max(entry["peak_rss_mib"], round(int(peak) / 1024, 1))
    if stage != "training":
        out = folder / stage
        if not all((out / f"{i}.nii.gz").is_file() for i in ids):
            print(stage, "not on every scored volume: left out")
            continue
        scores = score_folder(out, items, data.structures, folder / f"{stage}_scores.json")
        entry["mean_dice"] = scores["mean_dice_all"]
        print(stage, f"{100 * scores['mean_dice_all']:.1f}", {k: round(100 * v, 1) for k, v in scores["mean_dice"].items()},
              "HD95", {k: round(v, 1) for k, v in scores["mean_hd95_mm"].items()}, entry["seconds"], "s")
    record[stage] = entry
name = "done.json" if all(s in record for s in ("pred", "pred_size", "pred_tokens")) else "record.json"
(folder / name).write_text(json.dumps(record, indent=2) + "\n")
print("wrote", folder / name)
