"""analyse.py DUMP SUPPORT_ID [k2 support ids...]: location-prior variants scored on the dumped dev volumes."""

import sys, itertools, json
from pathlib import Path
import numpy as np, torch
from scipy import ndimage

sys.path.insert(0, "/work/main")
from bundle.postprocessing import CleanMaskd, SizeConstraintd
from monai.data import MetaTensor

dump = Path(sys.argv[1])
support = sys.argv[2].split(",")
VALUES = [6, 1, 3, 2]
NAMES = ["liver", "spleen", "lk", "rk"]
BINS = (48, 48, 32)


def load(i):
    z = np.load(dump / f"{i}.npz")
    return {k: z[k] for k in z.files}


def body_box(image):
    m = image > 5
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        m = lab == (np.argmax(sizes) + 1)
    xs = np.where(m.any(axis=(1, 2)))[0]
    ys = np.where(m.any(axis=(0, 2)))[0]
    return xs[0], xs[-1] + 1, ys[0], ys[-1] + 1


def coords(shape, box, zmode, zrange=None):
    x0, x1, y0, y1 = box
    X, Y, Z = shape
    u = (np.arange(X) + 0.5 - x0) / (x1 - x0)
    v = (np.arange(Y) + 0.5 - y0) / (y1 - y0)
    if zrange is None:
        zrange = (0, Z)
    w = (np.arange(Z) + 0.5 - zrange[0]) / (zrange[1] - zrange[0])
    return u, v, w


def to_bins(t, n):
    return np.clip((t * n).astype(int), 0, n - 1)


def build_prior(volumes, sigma, zmode):
    acc = np.zeros((4,) + BINS)
    cnt = np.zeros(BINS)
    for d in volumes:
        lab = d["label"]
        u, v, w = coords(lab.shape, body_box(d["image"]), zmode)
        bu, bv, bw = to_bins(u, BINS[0]), to_bins(v, BINS[1]), to_bins(w, BINS[2])
        idx = np.ix_(bu, bv, bw)
        for c, val in enumerate(VALUES):
            np.add.at(acc[c], idx, (lab == val).astype(float))
        np.add.at(cnt, idx, 1.0)
    frac = acc / np.maximum(cnt, 1)
    out = []
    for c in range(4):
        p = frac[c]
        if zmode == "plane":
            p = p.max(axis=2, keepdims=True).repeat(BINS[2], axis=2)
        s = [sigma * BINS[0], sigma * BINS[1], (sigma * BINS[2]) if zmode != "plane" else 0]
        p = ndimage.gaussian_filter(ndimage.maximum_filter(p, size=1), s)
        out.append(p / max(p.max(), 1e-8))
    return np.stack(out)


def sample_prior(prior, d, zmode):
    u, v, w = coords(d["label"].shape, body_box(d["image"]), zmode)
    bu, bv, bw = to_bins(u, BINS[0]), to_bins(v, BINS[1]), to_bins(w, BINS[2])
    return prior[:, bu][:, :, bv][:, :, :, bw]


def dice(pred, lab):
    out = []
    for c, val in enumerate(VALUES, 1):
        p, g = pred == c, lab == val
        out.append(200.0 * (p & g).sum() / max(p.sum() + g.sum(), 1))
    return out


clean = CleanMaskd("pred", 4, True, 1)


def finish(logits, affine, size_ml):
    t = MetaTensor(torch.from_numpy(logits.astype(np.float32)), affine=torch.from_numpy(affine))
    if size_ml is not None:
        t = SizeConstraintd("pred", size_ml, 0.2)({"pred": t})["pred"]
    lab = torch.argmax(t, 0, keepdim=True)
    return clean({"pred": lab})["pred"][0].numpy()


sup = [load(i) for i in support]
vox_ml = lambda a: float(np.prod(np.linalg.norm(a[:3, :3], axis=0))) / 1000
size_ml = [np.mean([(d["label"] == v).sum() * vox_ml(d["affine"]) for d in sup]) for v in VALUES]
dev = sorted(p.stem for p in dump.glob("*.npz") if p.stem not in support)
if len(sys.argv) > 3:
    dev = sys.argv[3].split(",")
variants = [("base", None)]
for zmode in ("cut", "plane"):
    for sigma in (0.03, 0.06):
        for mode in ("gate0.2", "soft1", "soft2"):
            variants.append((f"{zmode} s{sigma} {mode}", (zmode, sigma, mode)))
priors = {}
rows = {}
for name in dev:
    d = load(name)
    logits = d["logits"].astype(np.float32)
    for vname, spec in variants:
        lg = logits.copy()
        if spec is not None:
            zmode, sigma, mode = spec
            key = (zmode, sigma)
            if key not in priors:
                priors[key] = build_prior(sup, sigma, zmode)
            pr = sample_prior(priors[key], d, zmode)
            if mode.startswith("gate"):
                tau = float(mode[4:])
                lg[1:][pr < tau] = -1e4
            else:
                lg[1:] += float(mode[4:]) * np.log(pr + 1e-3)
        for sz in (False, True):
            pred = finish(lg, d["affine"], size_ml if sz else None)
            rows.setdefault((vname, sz), {})[name] = dice(pred, d["label"])
    print(name, "done", flush=True)
print("dev volumes:", dev, "support:", support, "size prior ml:", [round(s) for s in size_ml])
print(f"{'variant':28s} size  liver spleen  lk    rk   mean")
for (vname, sz), per in rows.items():
    m = np.mean(list(per.values()), axis=0)
    print(f"{vname:28s} {'on ' if sz else 'off'}  " + " ".join(f"{x:5.1f}" for x in m) + f"  {m.mean():5.1f}")
json.dump(
    {f"{v}|{s}": per for (v, s), per in rows.items()},
    open(dump / f"analysis_{'_'.join(support)}_{len(dev)}_{dev[0]}.json", "w"),
)
