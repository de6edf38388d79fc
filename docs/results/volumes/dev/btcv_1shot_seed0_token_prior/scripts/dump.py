"""dump.py RUN OUT ID...: the run's own volume inference on pool volumes (cut as the test volumes), saving
the K x X x Y x Z logits (float16), the LPS image (0..255, uint8) and the LPS label map, for offline analysis."""

import json, sys, os
from pathlib import Path
import numpy as np, torch

sys.path.insert(0, "/work/main")
from monai.bundle import ConfigParser
from monai.transforms import Compose
from bundle.experiments.volumes import crop_to_structures
from bundle.data.volumes import volume_load_transforms

run, out, ids = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
out.mkdir(parents=True, exist_ok=True)
items = [
    {
        "image": f"/work/main/.data/btcv/imagesTr/{i}.nii.gz",
        "label": f"/work/main/.data/btcv/labelsTr/{i}.nii.gz",
        "id": i,
    }
    for i in ids
]
cut = crop_to_structures(items, "/work/runs/loc/cut", [6, 1, 3, 2])
cmd = json.load(open(run + "/command.json"))["pred"]
parser = ConfigParser()
parser.read_config(cmd["files"])
over = dict(cmd["overrides"], input_dir="/work/runs/loc/cut/images", output_dir=str(out / "unused"))
for k, v in over.items():
    parser[k] = v
torch.set_num_threads(2)
net = parser.get_parsed_content("network")
from ignite.handlers import Checkpoint

Checkpoint.load_objects(
    to_load={"model": net},
    checkpoint=torch.load(parser.get_parsed_content("ckpt"), map_location="cpu", weights_only=False),
)
net.eval()
inferer = parser.get_parsed_content("inferer")
pre = parser.get_parsed_content("preprocessing")
lab = Compose(volume_load_transforms("ct", [75.0, 400.0], with_label=True))
for it in cut:
    name = it["id"]
    if (out / f"{name}.npz").is_file():
        continue
    d = pre({"image": it["image"]})
    with torch.no_grad():
        logits = inferer(d["image"][None], net)[0]
    l = lab({"image": it["image"], "label": it["label"]})
    np.savez_compressed(
        out / f"{name}.npz",
        logits=logits.cpu().numpy().astype(np.float16),
        image=np.asarray(l["image"][0]).astype(np.uint8),
        label=np.rint(np.asarray(l["label"][0])).astype(np.int16),
        affine=np.asarray(d["image"].affine),
    )
    print(name, tuple(logits.shape), flush=True)
