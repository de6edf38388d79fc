import numpy as np, sys
from scipy.stats import rankdata


def roc_auc_score(y, s):
    r = rankdata(s)
    n1 = y.sum()
    n0 = len(y) - n1
    return (r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


for n in ["00", "01", "02", "03", "05", "06", "07", "08", "09"]:
    z = np.load("/work/runs/loc/k1s0/btcv_sabs_%s.npz" % n)
    lg = z["logits"].astype(np.float32)
    lab = z["label"]
    out = []
    for c, v in ((3, 3), (4, 2), (2, 1)):
        others = np.delete(lg, c, axis=0).max(0)
        gap = lg[c] - others
        g = lab == v
        body = z["image"] > 5
        sel = body
        y = g[sel].ravel()
        s = gap[sel].ravel()
        idx = np.random.default_rng(0).choice(len(y), min(len(y), 400000), replace=False)
        auc = roc_auc_score(y[idx], s[idx]) if y[idx].any() else float("nan")
        # fraction of true voxels among top-N gap voxels (N = true size)
        N = g.sum()
        top = np.argsort(gap.ravel())[-N:]
        prec = g.ravel()[top].mean()
        out.append(
            f"c{c} auc {auc:.3f} top-N precision {prec:.2f} mean p at organ {np.mean(np.exp(lg[c][g])/np.exp(lg[:,g]).sum(0)):.2f}"
        )
    print(n, " | ".join(out))
