"""Run one segmenting pass of a volume run (its command.json entry) on a subset of the test volumes, with the
same overrides except input_dir (a folder of links to the chosen cut test volumes): passes over volumes whose
embeddings are already cached can run while the first pass still encodes the rest."""
import json, sys
from pathlib import Path
sys.path.insert(0, "/work/main")
from bundle.commands import bundle_args, run_bundle

folder, stage, part = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
ids = sys.argv[4:]
command = json.loads((folder / "command.json").read_text())[stage]
images = Path(command["overrides"]["input_dir"])
subset = folder / f"{stage}_{part}_input"
subset.mkdir(exist_ok=True)
for i in ids:
    link = subset / f"{i}.nii.gz"
    if not link.is_symlink():
        link.symlink_to((images / f"{i}.nii.gz").resolve())
overrides = {**command["overrides"], "input_dir": str(subset)}
with open(folder / f"{stage}_{part}.log", "a") as log:
    run_bundle(bundle_args("run", command["files"], overrides), "/work/main", log=log, usage=folder / f"{stage}_{part}.usage")
print("done", stage, part, ids)
