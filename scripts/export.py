"""Export a trained task as a self-contained MONAI bundle folder (+ TorchScript, ONNX and a zip).

    python scripts/export.py --name kvasir_4shot --ckpt models/model.pt \\
        --config_file configs/train.json configs/datasets/kvasir.json --eval_dir eval --out dist

writes ``dist/kvasir_4shot/`` (the ``bundle`` package, ``configs/inference.json`` with the task's
settings merged in, ``configs/metadata.json`` with its labels and measured Dice, ``models/model.pt``,
``models/model.ts``, ``models/model.onnx``, ``docs/README.md``, LICENSE, ``large_files.yml`` with the
weights' md5, ``configs/train.json`` for MONAI Label's Train) and ``dist/kvasir_4shot.zip`` (the folder
without the exports, ready to upload). The folder is written under a temporary name and renamed when
complete. Without the ``[export]`` extra the ONNX export is skipped with a warning.

    python scripts/export.py --name lungs --untrained --config_file configs/train.json configs/datasets/jsrt.json

writes ``dist/lungs/``, a task that is not trained yet (the pretrained backbone with an untrained
decoder LoRA and prompt; no exports, no zip), to label its first images in MONAI Label and 3D Slicer.
``--volumes`` exports a task that segments 3D volumes slice by slice (for MONAI Label: a 3D model).
It prints the TorchScript (traced; compared at batch sizes 1 to 3) and ONNX (onnxruntime) outputs'
largest absolute difference from PyTorch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.export import export_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="task name: the folder and MONAI Label model name")
    parser.add_argument("--ckpt", help="the trained model.pt (default models/model.pt)")
    parser.add_argument("--untrained", action="store_true",
                        help="a task not trained yet: the pretrained backbone, untrained LoRA and prompt (implies "
                             "--no_torchscript --no_onnx --no_zip)")  # fmt: skip
    parser.add_argument("--config_file", nargs="+", default=["configs/train.json"],
                        help="the config files the task was trained with")  # fmt: skip
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="an override the task was trained with, e.g. --set backbone vit_b")  # fmt: skip
    parser.add_argument("--eval_dir", help="the task's evaluation folder (its Dice goes into metadata)")
    parser.add_argument("--out", default="dist")
    parser.add_argument("--no_torchscript", action="store_true")
    parser.add_argument("--no_onnx", action="store_true")
    parser.add_argument("--no_zip", action="store_true")
    parser.add_argument(
        "--volumes", action="store_true", help="a volume task: segment 3D images slice by slice (configs/volumes.json)"
    )
    args = parser.parse_args()

    overrides = {}
    for key, value in args.set:
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    ckpt = args.ckpt if args.untrained or args.ckpt else "models/model.pt"
    exports = not args.untrained
    report = export_task(ckpt, args.config_file, args.name, args.out, overrides=overrides, eval_dir=args.eval_dir,
                         torchscript=exports and not args.no_torchscript, onnx=exports and not args.no_onnx,
                         make_zip=exports and not args.no_zip, volumes=args.volumes, untrained=args.untrained)  # fmt: skip
    print(json.dumps(report.as_dict(), indent=2))


if __name__ == "__main__":
    main()
