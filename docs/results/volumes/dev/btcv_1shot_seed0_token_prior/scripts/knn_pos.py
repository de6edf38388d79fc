"""knn_pos.py: position-aware token votes on the 9 development volumes (third rule in rules.md).

Like knn.py (same model, stratified bank, post-processing), but the 10 voting support tokens are chosen by
cos(e_q, e_s) - lambda * |p_q - p_s|^2, p = the token centre in its slice's body box, normalised to [0, 1]."""
import json, sys
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from scipy import ndimage
sys.path.insert(0, "/work/main")
from monai.bundle import ConfigParser
from ignite.handlers import Checkpoint
from bundle.inferers import fit_longest_side
from bundle.postprocessing import CleanMaskd

run = "/work/runs/dev_prompt/base/btcv/1shot/seed0/blo-sam"
cmd = json.load(open(run + "/command.json"))["pred"]
parser = ConfigParser(); parser.read_config(cmd["files"])
for k, v in dict(cmd["overrides"], input_dir="/work/runs/loc/cut/images", output_dir="/tmp/unused").items():
    parser[k] = v
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
net = parser.get_parsed_content("network")
Checkpoint.load_objects(to_load={"model": net}, checkpoint=torch.load(parser.get_parsed_content("ckpt"), map_location="cpu", weights_only=False))
net.eval(); inferer = parser.get_parsed_content("inferer"); pre = parser.get_parsed_content("preprocessing")
VALUES = [6, 1, 3, 2]
LAMBDAS = (0.5, 1.0, 2.0)


def body_positions(grey, h, w):
    """64*64 x 2 token centres (row, column) in the slice's body box, normalised to [0, 1]."""
    rows, cols = grey.shape
    mask = grey > 0
    lab, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        mask = lab == 1 + int(np.argmax(sizes))
        r, c = np.nonzero(mask)
        r0, r1, c0, c1 = r.min(), r.max() + 1, c.min(), c.max() + 1
    else:
        r0, r1, c0, c1 = 0, rows, 0, cols
    centre = (torch.arange(64, dtype=torch.float32) + 0.5) * 4  # token centres on the 256 input grid
    pr = (centre * rows / h - r0) / max(r1 - r0, 1)
    pc = (centre * cols / w - c0) / max(c1 - c0, 1)
    return torch.stack(torch.meshgrid(pr, pc, indexing="ij"), dim=-1).reshape(-1, 2)


def tokens(name):
    d = pre({"image": f"/work/runs/loc/cut/images/{name}.nii.gz"})
    vol = d["image"].as_tensor()
    z = np.load(f"/work/runs/loc/k1s0/{name}.npz")
    lab = torch.from_numpy(z["label"].astype(np.int64))
    cls = torch.zeros_like(lab)
    for c, v in enumerate(VALUES, 1):
        cls[lab == v] = c
    feats, labs, poss = [], [], []
    for i in range(vol.shape[-1]):
        img = inferer.slice_input(vol, i)
        x, (h, w) = fit_longest_side(img[None], 256)
        with torch.no_grad():
            e = net.encode(x)[0]  # 256 x 64 x 64
        feats.append(F.normalize(e.reshape(256, -1).T, dim=1))
        poss.append(body_positions(inferer.slicer.image(vol, i)[0].numpy(), h, w))
        plane = inferer.slicer.upright(cls[None, :, :, i])[0]
        onehot = F.one_hot(plane, 5).permute(2, 0, 1).float()[None]
        onehot, _ = fit_longest_side(onehot, 256)
        labs.append(F.avg_pool2d(onehot, 4)[0].reshape(5, -1).T)
    return torch.stack(feats), torch.stack(labs), torch.stack(poss), z["label"], (h, w)


sf, sl, sp, _, _ = tokens("btcv_sabs_04")
sf, sl, sp = sf.reshape(-1, 256), sl.reshape(-1, 5), sp.reshape(-1, 2)
hard = sl.argmax(1)
rng = np.random.default_rng(0)
PER = {0: 8000, 1: 4000, 2: 4000, 3: 4000, 4: 4000}  # as knn.py
keep = []
for c, n in PER.items():
    idx = torch.nonzero(hard == c)[:, 0]
    keep.append(idx[torch.from_numpy(rng.choice(len(idx), size=min(len(idx), n), replace=False))])
keep = torch.cat(keep)
bank, banklab, bankpos = sf[keep], sl[keep], sp[keep]
print("bank tokens", len(keep), flush=True)
clean = CleanMaskd("pred", 4, True, 1)
out = Path(sys.argv[3] if len(sys.argv) > 3 else "/work/runs/pos/scores.json")
res = json.loads(out.read_text()) if out.is_file() else {}


def score(p, label):
    lab = clean({"pred": torch.argmax(p, 0, keepdim=True)})["pred"][0].numpy()
    return [round(200 * ((lab == c) & (label == v)).sum() / max((lab == c).sum() + (label == v).sum(), 1), 1)
            for c, v in enumerate(VALUES, 1)]


for name in sys.argv[1].split(","):
    if all(name in res.get(f"lam{l}_product", {}) for l in LAMBDAS):
        continue
    tf, tl, tp, label, (h, w) = tokens(name)
    S = tf.shape[0]
    votes = {l: torch.zeros(S, 4096, 5) for l in LAMBDAS}
    for s in range(S):
        sim = tf[s] @ bank.T
        dist = torch.cdist(tp[s], bankpos).square_()
        for l in LAMBDAS:
            top = (sim - l * dist).topk(10, dim=1)
            votes[l][s] = banklab[top.indices].mean(1)
    net_probs = torch.softmax(torch.from_numpy(np.load(f"/work/runs/loc/k1s0/{name}.npz")["logits"].astype(np.float32)), 0)
    for l in LAMBDAS:
        v = votes[l].reshape(S, 64, 64, 5).permute(0, 3, 1, 2)
        v = F.interpolate(v, size=(256, 256), mode="bilinear", align_corners=False)[..., :h, :w]
        v = F.interpolate(v, size=(label.shape[1], label.shape[0]), mode="bilinear", align_corners=False)
        pred = torch.stack([inferer.slicer.from_upright(v[s]) for s in range(S)], dim=-1)
        pred = pred / pred.sum(0, keepdim=True).clamp_min(1e-6)
        for vname, p in (("votes", pred), ("mean75", 0.75 * pred + 0.25 * net_probs),
                         ("product", pred.clamp_min(1e-3) * net_probs)):
            dice = score(p, label)
            res.setdefault(f"lam{l}_{vname}", {})[name] = dice
            print(name, f"lam{l}_{vname}", dice, flush=True)
    out.write_text(json.dumps(res, indent=1))
for vname, per in res.items():
    m = np.mean(list(per.values()), axis=0)
    print(vname, len(per), "volumes, mean", [round(float(x), 1) for x in m], round(float(m.mean()), 1))
