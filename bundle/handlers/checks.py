"""Checks run by the configs before any work starts, so bad input fails in seconds with one clear line.

Called from the configs' ``initialize`` expressions (``check_command_line``, ``check_training``,
``check_inference``) and their ``CheckpointLoader`` (``existing_checkpoint``,
:class:`CheckedCheckpointLoader`). Every failure is a :class:`bundle.errors.BundleInputError` naming the
file or option and what to do.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader

from bundle.data.inputs import check_outputs
from bundle.data.masks import check_training_labels
from bundle.errors import BundleInputError, MissingInputError
from bundle.networks.blo_sam import CLASS_COUNT_KEY

# ``monai.bundle run``'s own parameters: everything else on its command line overrides a config id.
RUN_OPTIONS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file")


def _config_ids(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every id of a parsed config (``a``, ``a#b``, ``a#0``) -> its value."""
    ids: dict[str, Any] = {}
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        ids[name] = value
        ids.update(_config_ids(value, name + "#"))
    return ids


def _overrides(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``--name value`` / ``--name=value`` pairs of a ``monai.bundle run`` command line, and its positionals."""
    options: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            options[name] = value
        else:
            positional.append(token)
        i += 1
    return options, positional


def _config_files(value: str) -> list[str]:
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return [str(f) for f in parsed] if isinstance(parsed, (list, tuple)) else [str(parsed)]


def _is_monai_bundle_run(argv: Sequence[str]) -> bool:
    return bool(argv) and Path(argv[0]).as_posix().endswith("monai/bundle/__main__.py") and "run" in argv[1:2]


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Refuse command-line options that name no config id (``--shot 2`` for ``--shots 2``).

    MONAI adds an unknown override as a new, unused config key, so a typo silently runs with the
    default. Only ``python -m monai.bundle run`` command lines are checked (``argv`` defaults to
    ``sys.argv``); an ``--args_file`` run is not, its options being in the file.

    Raises:
        BundleInputError: an unknown option, with the closest known one.
    """
    argv = list(sys.argv if argv is None else argv)
    if argv is sys.argv or argv == sys.argv:
        if not _is_monai_bundle_run(argv):
            return
        argv = argv[2:]
    options, _ = _overrides(argv)
    if "args_file" in options or "config_file" not in options:
        return
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_config_files(options["config_file"]))
    ids = _config_ids(parser.config)
    for name in options:
        if name in RUN_OPTIONS or name in ids:
            continue
        parent = name.rpartition("#")[0]
        if parent and isinstance(ids.get(parent), dict):  # adding a key to an existing component
            continue
        known = sorted({i for i in ids if "#" not in i} | set(RUN_OPTIONS))
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean --{close[0]}?" if close else "see README.md for the options"
        raise BundleInputError(f"unknown option --{name}: no such key in {options['config_file']}; {hint}")


def check_writable(**folders: str | os.PathLike | None) -> None:
    """Create each folder if needed and make sure a file can be written in it.

    Args:
        folders: option name -> folder (``None`` is skipped), e.g. ``ckpt_dir="models"``.

    Raises:
        BundleInputError: a folder cannot be created or written (the message names the option).
    """
    for option, folder in folders.items():
        if folder in (None, "", "None"):
            continue
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise BundleInputError(
                f"--{option} {folder}: cannot write there ({reason}); choose a folder you can write to"
            ) from err


def check_device(device: str | torch.device) -> None:
    """Refuse a device this machine does not have (``--device cuda`` without a GPU).

    Raises:
        BundleInputError: not a device name, or a CUDA device that is not available.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise BundleInputError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BundleInputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise BundleInputError(f"--device {device}: only {count} CUDA GPU(s) here (cuda:0..cuda:{count - 1})")


def check_training(
    ckpt_dir: str,
    output_dir: str,
    device: str | torch.device,
    items: Sequence[Mapping[str, Any]],
    mask_threshold: float | None = 127,
    num_classes: int | None = None,
    embedding_cache_dir: str | None = None,
    mask_value_map: Mapping[int | str, int] | None = None,
) -> None:
    """Everything a training run can check before it starts: options, device, folders, labels.

    Args:
        ckpt_dir, output_dir, embedding_cache_dir: the folders the run writes.
        device: the ``--device``.
        items: the training items (D1 and D2) whose masks must not all be empty.
        mask_threshold, num_classes, mask_value_map: how the masks are read (see :class:`bundle.data.LoadMaskd`).
    """
    check_command_line()
    check_device(device)
    check_writable(ckpt_dir=ckpt_dir, output_dir=output_dir, embedding_cache_dir=embedding_cache_dir)
    threshold = None if mask_value_map else mask_threshold
    check_training_labels(items, threshold=threshold, value_map=mask_value_map or None, num_classes=num_classes)


def check_inference(
    inputs: Sequence[dict], input_dir: str, output_dir: str, output_ext: str, device: str | torch.device
) -> None:
    """Everything an inference run can check before it starts: options, device, inputs and outputs."""
    check_command_line()
    check_device(device)
    check_outputs(inputs, input_dir, output_dir, output_ext)
    check_writable(output_dir=output_dir)


def existing_checkpoint(path: str, flag: str = "--ckpt") -> str:
    """``path`` if it is a file, else an error that says how to make one or which option picks another.

    Args:
        path: the checkpoint.
        flag: the option that sets it (``--ckpt`` for inference, ``--ckpt_path`` for evaluation).
    """
    if not os.path.isfile(path):
        raise MissingInputError(
            f"checkpoint {path} not found; train one first "
            f"(`python -m monai.bundle run training --config_file configs/train.json`) or pass {flag} <model.pt>"
        )
    return path


def checkpoint_class_count(path: str, default: int) -> int:
    """The class count a checkpoint was trained for (``default`` when the file is missing or has none),
    so volume inference writes 0..C without being told C; :func:`check_checkpoint` reports bad files."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return int(default)
    try:
        state = _state_dict(path, torch.load(path, map_location="cpu", weights_only=True), "model")
    except Exception:  # reported, with the file name, when the loader checks the checkpoint
        return int(default)
    count = state.get(CLASS_COUNT_KEY) if isinstance(state, Mapping) else None
    return int(count) if count is not None and count.numel() == 1 else int(default)


def _state_dict(path: str, checkpoint: Any, key: str) -> Mapping[str, torch.Tensor]:
    """The model weights inside a loaded checkpoint (Ignite saves a single object without its key)."""
    if isinstance(checkpoint, Mapping) and key in checkpoint and isinstance(checkpoint[key], Mapping):
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise BundleInputError(
            f"checkpoint {path} is not a model state dict ({type(checkpoint).__name__}); "
            "pass the model.pt written by training"
        )
    return checkpoint


def _lora_rank(state: Mapping[str, torch.Tensor]) -> int | None:
    for name, value in state.items():
        if name.endswith("lora_a.weight"):
            return int(value.shape[0])
    return None


def check_checkpoint(path: str, network: torch.nn.Module, key: str = "model") -> None:
    """Refuse an empty, corrupt or foreign checkpoint, or one of another backbone, LoRA rank or class count.

    Args:
        path: the checkpoint file.
        network: the model it must load into.
        key: the checkpoint key of the model (as in the loader's ``load_dict``).

    Raises:
        BundleInputError: the message names the file and the setting that differs.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise BundleInputError(f"checkpoint {path} is empty (0 bytes): an interrupted copy? train again or copy it")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged or non-PyTorch files
        detail = " ".join(str(err).split())[:200]
        raise BundleInputError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {detail}); it is damaged or not a "
            "PyTorch file: train again or pass the model.pt written by training"
        ) from err
    state = _state_dict(path, loaded, key)
    expected = network.state_dict()
    shared = set(state) & set(expected)
    if not shared:
        example = next(iter(state), "<none>")
        raise BundleInputError(
            f"checkpoint {path} is not a BLO-SAM model: none of its {len(state)} tensors (e.g. {example!r}) "
            "belong to this network; pass the model.pt written by training"
        )
    ours, theirs = _lora_rank(expected), _lora_rank(state)
    if ours is not None and theirs is not None and ours != theirs:
        raise BundleInputError(
            f"checkpoint {path} was trained with --lora_rank {theirs}, this run uses --lora_rank {ours}; "
            f"pass --lora_rank {theirs}"
        )
    backbone = getattr(network, "backbone_name", "?")
    encoder = [n for n in set(state) ^ set(expected) if n.startswith("image_encoder.")]
    encoder += [n for n in shared if n.startswith("image_encoder.") and state[n].shape != expected[n].shape]
    if encoder:
        raise BundleInputError(
            f"checkpoint {path} was trained with another backbone: its image encoder does not fit "
            f"--backbone {backbone} (e.g. {sorted(encoder)[0]!r}); pass the --backbone it was trained with"
        )
    tokens = "mask_decoder.mask_tokens.weight"
    if tokens in shared and state[tokens].shape != expected[tokens].shape:
        raise BundleInputError(
            f"checkpoint {path} has {state[tokens].shape[0]} mask outputs, this run's model "
            f"{expected[tokens].shape[0]} (--class_names gives {getattr(network, 'num_classes', '?')} classes); "
            "pass the --class_names it was trained with"
        )
    count = state.get(CLASS_COUNT_KEY)
    ours = getattr(network, "num_classes", None)
    if count is not None and ours is not None and count.numel() == 1 and int(count) != int(ours):
        raise BundleInputError(
            f"checkpoint {path} was trained for {int(count)} class(es), this run's --class_names gives {ours}; "
            "pass the --class_names it was trained with"
        )
    old_format = {CLASS_COUNT_KEY} - set(state)  # checkpoints written before the class count was saved
    missing = sorted(set(expected) - set(state) - old_format)
    unexpected = sorted(set(state) - set(expected))
    prompts = [n for n in missing + unexpected if n.startswith("prompt_") and "." not in n]
    if prompts:
        theirs = sorted(n for n in state if n.startswith("prompt_") and "." not in n)
        raise BundleInputError(
            f"checkpoint {path} was trained with another --prompt (it holds {', '.join(theirs) or 'no prompt'}, "
            f"this model needs {', '.join(sorted(n for n in expected if n.startswith('prompt_') and '.' not in n))}); "
            "pass the --prompt it was trained with"
        )
    shapes = sorted(n for n in shared if state[n].shape != expected[n].shape)
    if missing or unexpected or shapes:
        example = (missing or unexpected or shapes)[0]
        raise BundleInputError(
            f"checkpoint {path} does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(shapes)} differently shaped tensors, e.g. {example!r}); use the --backbone, --lora_rank, "
            "--prompt and --class_names it was trained with"
        )


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments) that checks the file when the config builds it.

    A wrong checkpoint then fails before any image is read, with one line naming the file and the
    setting (backbone, LoRA rank, classes) that differs, instead of a ``load_state_dict`` traceback
    once the run has started. With ``strict=False`` only readability is checked.
    """

    def __init__(self, load_path: str, load_dict: dict, *args: Any, **kwargs: Any) -> None:
        super().__init__(load_path, load_dict, *args, **kwargs)
        if len(load_dict) == 1:
            key, obj = next(iter(load_dict.items()))
            if isinstance(obj, torch.nn.Module) and self.strict:
                check_checkpoint(load_path, obj, key)
