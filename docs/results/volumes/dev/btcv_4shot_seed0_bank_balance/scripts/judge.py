"""Apply ../rules.md to the development scores dev.py wrote: the table of each gamma at each k and whether it
passes each of the rule's three conditions against gamma 0.

    python judge.py <k = 4 work folder> [<k = 1 work folder>]
"""

import json
import sys
from pathlib import Path

ORGANS = ("liver", "spleen", "left_kidney", "right_kidney")


def scores(work: Path) -> dict[float, dict[str, float]]:
    """gamma -> organ -> mean 3D Dice % over the development volumes (and ``mean``)."""
    out = {}
    for path in sorted(work.glob("gamma_*_scores.json")):
        data = json.loads(path.read_text())
        dice = {o: 100 * data["mean_dice"][o] for o in ORGANS}
        out[float(path.name.split("_")[1])] = dict(dice, mean=100 * data["mean_dice_all"])
    return dict(sorted(out.items()))


def main() -> None:
    works = {4: Path(sys.argv[1]), **({1: Path(sys.argv[2])} if len(sys.argv) > 2 else {})}
    table = {k: scores(w) for k, w in works.items()}
    print("| k | gamma | liver | spleen | left kidney | right kidney | mean |")
    print("|---|---|---|---|---|---|---|")
    for k, rows in table.items():
        for gamma, row in rows.items():
            print(f"| {k} | {gamma:g} | " + " | ".join(f"{row[o]:.1f}" for o in (*ORGANS, "mean")) + " |")
    base4 = table[4][0.0]
    for gamma, row in table[4].items():
        if gamma == 0:
            continue
        rise = row["mean"] - base4["mean"]
        drop4 = max(base4[o] - row[o] for o in ORGANS)
        verdict = [f"k = 4 mean {rise:+.2f} ({'pass' if rise >= 2 else 'fail'}: >= +2)",
                   f"largest k = 4 organ drop {drop4:.2f} ({'pass' if drop4 <= 2 else 'fail'}: <= 2)"]  # fmt: skip
        if 1 in table and gamma in table[1]:
            base1, row1 = table[1][0.0], table[1][gamma]
            fall = base1["mean"] - row1["mean"]
            drop1 = max(base1[o] - row1[o] for o in ORGANS)
            verdict += [f"k = 1 mean {-fall:+.2f} ({'pass' if fall <= 0.5 else 'fail'}: >= -0.5)",
                        f"largest k = 1 organ drop {drop1:.2f} ({'pass' if drop1 <= 2 else 'fail'}: <= 2)"]  # fmt: skip
        else:
            verdict.append("k = 1 not run")
        print(f"gamma {gamma:g}: " + "; ".join(verdict))


if __name__ == "__main__":
    main()
