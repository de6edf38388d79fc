"""The few-shot experiment grid: data set x shots x seed x method, one folder per run.

Each run is the bundle's own two commands (``run training``, then ``run evaluating``) in a
subprocess, so an experiment measures exactly what a user would get. A run's folder holds
``command.json`` (config files and overrides), ``config.json`` (the merged config), ``train.log``,
``eval.log``, ``models/model.pt``, ``train/`` (TensorBoard: both levels' losses, validation Dice),
``eval/`` (per-case Dice and HD95 at original resolution) and, last, ``done.json`` (timings),
written atomically: a run with ``done.json`` is finished and skipped when the grid is run again;
an interrupted one resumes from its ``models/resume.pt``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from bundle.atomic import write_json_atomically
from bundle.commands import bundle_args, merged_config, run_bundle

PROJECT = Path(__file__).resolve().parents[2]
CONFIGS = PROJECT / "configs"


@dataclass(frozen=True)
class Method:
    """How a method differs from the default bundle: extra config files and overrides."""

    name: str
    description: str
    train_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict)
    seeded: bool = True  # False: no training data involved, one run per data set


DEFAULT_METHOD = "joint"  # configs/train.json's "method" (tests/experiments/test_grid.py keeps them equal)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("blo-sam", "BLO-SAM (bi-level), first-order hypergradient", overrides={"method": "blo-sam"}),
        Method(
            "blo-sam-2nd",
            "BLO-SAM, second-order (finite-difference) hypergradient",
            overrides={"method": "blo-sam", "hypergradient": "finite_difference"},
        ),  # fmt: skip
        Method(
            "joint",
            "single level: LoRA decoder and prompt together on D1+D2 (SAMed-like; the default)",
            overrides={"method": "joint"},
        ),  # fmt: skip
        Method(
            "decoder-only",
            "single level: LoRA decoder on D1+D2, the prompt not trained (kept at its initial value)",
            overrides={"method": "decoder-only"},
        ),  # fmt: skip
        Method(
            "zero-shot",
            "pretrained backbone, one box per ground-truth component (upper bound)",
            train_files=("methods/pretrained.json",),
            eval_files=("methods/box_prompt.json",),
            seeded=False,
        ),  # fmt: skip
        Method(
            "no-prompt",
            "pretrained backbone, no prompt (floor)",
            train_files=("methods/pretrained.json",),
            overrides={"prompt": "dense"},  # SAM's own "no mask" embedding and no sparse token
            seeded=False,
        ),  # fmt: skip
    )
}


@dataclass(frozen=True)
class DataSet:
    """A data set preset and the BLO-SAM paper's Dice (%) for it (Table 1, ViT-B SAM)."""

    name: str
    config: str
    shots: tuple[int, ...]
    paper_blo_sam: dict[int, float]
    paper_samed: dict[int, float]


DATASETS: dict[str, DataSet] = {
    "jsrt": DataSet("jsrt", "datasets/jsrt.json", (2, 4), {2: 87.1, 4: 93.7}, {2: 84.4, 4: 91.8}),
    "kvasir": DataSet("kvasir", "datasets/kvasir.json", (4, 8), {4: 59.7, 8: 61.6}, {4: 42.7, 8: 57.1}),
    # the paper's teeth numbers are on the Children's dental panoramic data set's masks; ours are
    # UFBA-425's masks on that data set's official adult-teeth test ids (see docs/dental.md)
    "dental": DataSet("dental", "datasets/dental.json", (4, 8), {4: 73.2, 8: 77.3}, {4: 69.9, 8: 76.4}),
}


@dataclass(frozen=True)
class Run:
    """One cell of the grid."""

    dataset: str
    shots: int | None  # None for unseeded methods
    seed: int | None
    method: str

    def folder(self, root: Path) -> Path:
        """``root/<dataset>/<shots>shot/seed<seed>/<method>`` (``root/<dataset>/<method>`` if unseeded)."""
        if self.seed is None:
            return root / self.dataset / self.method
        return root / self.dataset / f"{self.shots}shot" / f"seed{self.seed}" / self.method

    @property
    def label(self) -> str:
        parts = (self.dataset, self.shots and f"{self.shots}-shot",
                 self.seed is not None and f"seed {self.seed}", self.method)  # fmt: skip
        return " ".join(str(x) for x in parts if x)


def plan_grid(
    datasets: Sequence[str], seeds: Sequence[int], methods: Sequence[str], shots: dict[str, Sequence[int]] | None = None
) -> list[Run]:
    """All runs, seed by seed (so a partly finished grid already covers every cell), then data set,
    shots and method; unseeded methods (no training data) come first, once per data set."""
    unknown = [m for m in methods if m not in METHODS] + [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(
            f"unknown method or data set {unknown}; methods: {sorted(METHODS)}, data sets: {sorted(DATASETS)}"
        )
    runs = [Run(name, None, None, m) for name in datasets for m in methods if not METHODS[m].seeded]
    for seed in seeds:
        for name in datasets:
            for k in (shots or {}).get(name, DATASETS[name].shots):
                runs += [Run(name, k, seed, m) for m in methods if METHODS[m].seeded]
    return runs


@dataclass
class GridSettings:
    """What is common to every run of a grid."""

    root: Path
    dataset_dirs: dict[str, str]
    iterations: int = 300
    embedding_cache_dir: str | None = None  # shared by all runs: each image is encoded once
    max_test_cases: int | None = None  # evaluate on the first n test cases only (smoke runs)
    extra_overrides: dict = field(default_factory=dict)


def run_commands(run: Run, settings: GridSettings) -> dict[str, dict]:
    """The training and evaluation commands of ``run``: config files and ``--key value`` overrides."""
    method, data = METHODS[run.method], DATASETS[run.dataset]
    folder = run.folder(settings.root)
    files = [str(CONFIGS / "train.json"), str(CONFIGS / data.config)]
    files += [str(CONFIGS / f) for f in method.train_files]
    overrides = {
        "dataset_dir": settings.dataset_dirs[run.dataset],
        "iterations": settings.iterations,
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / "train"),
        **({"shots": run.shots, "seed": run.seed} if run.seed is not None else {}),
        **({"embedding_cache_dir": settings.embedding_cache_dir} if settings.embedding_cache_dir else {}),
        **({"val_interval": settings.iterations} if settings.iterations < 10 else {}),  # keep a validation
        **method.overrides,
        **settings.extra_overrides,
    }
    eval_files = files + [str(CONFIGS / "evaluate.json")] + [str(CONFIGS / f) for f in method.eval_files]
    eval_overrides = {**overrides, "output_dir": str(folder / "eval")}
    if settings.max_test_cases:
        eval_overrides["validate#data"] = f"$@split.test[:{int(settings.max_test_cases)}]"
    return {
        "training": {"files": files, "overrides": overrides},
        "evaluating": {"files": eval_files, "overrides": eval_overrides},
    }


def execute(run: Run, settings: GridSettings) -> dict:
    """Train and evaluate ``run`` unless its ``done.json`` exists; returns the timings."""
    folder = run.folder(settings.root)
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    commands = run_commands(run, settings)
    write_json_atomically(commands, folder / "command.json")
    write_json_atomically(merged_config(**commands["training"]), folder / "config.json")
    timings: dict = {"run": run.__dict__}
    for key, log in (("training", "train.log"), ("evaluating", "eval.log")):
        start = time.perf_counter()
        args = bundle_args(f"run {key}", commands[key]["files"], commands[key]["overrides"])
        try:
            with open(folder / log, "a") as out:  # a resumed run keeps the log of its first attempt
                run_bundle(args, PROJECT, log=out)
        except RuntimeError as err:
            tail = (folder / log).read_text().splitlines()[-15:]
            raise RuntimeError(f"{run.label}: {key} failed; see {folder / log}:\n" + "\n".join(tail)) from err
        tidy_log(folder / log)
        # seconds of this attempt (an interrupted run's earlier attempts are not counted)
        timings[f"{key}_seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomically(timings, done)
    return timings


def tidy_log(path: Path) -> None:
    """Strip trailing whitespace (progress bars leave it) so committed run records pass the
    Model Zoo's pre-commit checks (trailing-whitespace, end-of-file-fixer)."""
    text = path.read_text(errors="replace")
    tidy = "\n".join(line.rstrip() for line in text.split("\n")).rstrip("\n") + "\n"
    if tidy != text:
        path.write_text(tidy)


def run_grid(runs: Iterable[Run], settings: GridSettings, keep_going: bool = False) -> list[tuple[Run, str]]:
    """Execute ``runs`` in order with a progress bar; finished runs are skipped. Returns failures."""
    failures = []
    runs = list(runs)
    bar = tqdm(runs, desc="few-shot grid", unit="run")
    for run in bar:
        bar.set_postfix_str(run.label)
        try:
            execute(run, settings)
        except RuntimeError as err:
            if not keep_going:
                raise
            failures.append((run, str(err)))
            tqdm.write(str(err))
    return failures
