"""knn.py: can the frozen encoder's embeddings tell the organs apart? k-nearest-neighbour labelling of every
64x64 token of the dev volumes from the support volume's tokens (btcv_sabs_04), scored in 3D."""

import json, sys
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F

sys.path.insert(0, "/work/main")
from monai.bundle import ConfigParser
from ignite.handlers import Checkpoint
from bundle.inferers import fit_longest_side
from bundle.postprocessing import CleanMaskd

run = "/work/runs/dev_prompt/base/btcv/1shot/seed0/blo-sam"
cmd = json.load(open(run + "/command.json"))["pred"]
parser = ConfigParser()
parser.read_config(cmd["files"])
for k, v in dict(cmd["overrides"], input_dir="/work/runs/loc/cut/images", output_dir="/tmp/unused").items():
    parser[k] = v
torch.set_num_threads(2)
net = parser.get_parsed_content("network")
Checkpoint.load_objects(
    to_load={"model": net},
    checkpoint=torch.load(parser.get_parsed_content("ckpt"), map_location="cpu", weights_only=False),
)
net.eval()
inferer = parser.get_parsed_content("inferer")
pre = parser.get_parsed_content("preprocessing")
VALUES = [6, 1, 3, 2]


def tokens(name):
    d = pre({"image": f"/work/runs/loc/cut/images/{name}.nii.gz"})
    vol = d["image"].as_tensor()
    z = np.load(f"/work/runs/loc/k1s0/{name}.npz")
    lab = torch.from_numpy(z["label"].astype(np.int64))
    cls = torch.zeros_like(lab)
    for c, v in enumerate(VALUES, 1):
        cls[lab == v] = c
    feats, labs = [], []
    for i in range(vol.shape[-1]):
        img = inferer.slice_input(vol, i)
        x, (h, w) = fit_longest_side(img[None], 256)
        with torch.no_grad():
            e = net.encode(x)[0]  # 256 x 64 x 64
        feats.append(F.normalize(e.reshape(256, -1).T, dim=1))
        plane = inferer.slicer.upright(cls[None, :, :, i])[0]  # rows x cols
        onehot = F.one_hot(plane, 5).permute(2, 0, 1).float()[None]
        onehot, _ = fit_longest_side(onehot, 256)
        frac = F.avg_pool2d(onehot, 4)[0]  # 5 x 64 x 64
        labs.append(frac.reshape(5, -1).T)
    return torch.stack(feats), torch.stack(labs), z["label"], (h, w)


sf, sl, _, _ = tokens("btcv_sabs_04")
sf, sl = sf.reshape(-1, 256), sl.reshape(-1, 5)
hard = sl.argmax(1)
rng = np.random.default_rng(0)
PER = {0: 8000, 1: 4000, 2: 4000, 3: 4000, 4: 4000}  # class-stratified subsample of the support tokens
keep = []
for c, n in PER.items():
    idx = torch.nonzero(hard == c)[:, 0]
    keep.append(idx[torch.from_numpy(rng.choice(len(idx), size=min(len(idx), n), replace=False))])
fg = torch.cat(keep[1:])
bg = keep[0]
keep = torch.cat(keep)
bank, banklab = sf[keep], sl[keep]
print("support tokens", len(fg), "fg", len(bg), "bg", flush=True)
clean = CleanMaskd("pred", 4, True, 1)
res = {}
for name in sys.argv[1].split(","):
    tf, tl, label, (h, w) = tokens(name)
    S, N = tf.shape[:2]
    votes = torch.zeros(S, N, 5)
    for s in range(S):
        sim = tf[s] @ bank.T  # N x M
        top = sim.topk(10, dim=1)
        votes[s] = banklab[top.indices].mean(1)
    # back to the volume: tokens -> 256 grid -> slice size -> LPS
    v = votes.reshape(S, 64, 64, 5).permute(0, 3, 1, 2)
    v = F.interpolate(v, size=(256, 256), mode="bilinear", align_corners=False)[..., :h, :w]
    v = F.interpolate(
        v, size=label.shape[1::-1] if False else (label.shape[1], label.shape[0]), mode="bilinear", align_corners=False
    )
    pred = torch.stack([inferer.slicer.from_upright(v[s]) for s in range(S)], dim=-1)  # 5 x X x Y x Z
    np.save(f"/work/runs/loc/k1s0/{name}_knn.npy", pred.numpy().astype(np.float16))
    net_probs = torch.softmax(
        torch.from_numpy(np.load(f"/work/runs/loc/k1s0/{name}.npz")["logits"].astype(np.float32)), 0
    )
    pred = pred / pred.sum(0, keepdim=True).clamp_min(1e-6)
    for vname, p in (
        ("knn", pred),
        ("net", net_probs),
        ("mean", (pred + net_probs) / 2),
        ("mean75", 0.75 * pred + 0.25 * net_probs),
        ("product", (pred.clamp_min(1e-3) * net_probs)),
    ):
        lab = torch.argmax(p, 0, keepdim=True)
        lab = clean({"pred": lab})["pred"][0].numpy()
        dice = [
            round(200 * ((lab == c) & (label == val)).sum() / max((lab == c).sum() + (label == val).sum(), 1), 1)
            for c, val in enumerate(VALUES, 1)
        ]
        res.setdefault(vname, {})[name] = dice
        print(name, vname, dice, flush=True)
for vname, per in res.items():
    m = np.mean(list(per.values()), axis=0)
    print(vname, "mean", [round(float(x), 1) for x in m], round(float(m.mean()), 1))
json.dump(res, open("/work/runs/loc/knn_k1s0_strat.json", "w"))
