"""The bundle's own commands (``python -m monai.bundle ...``) run in a subprocess.

Experiments, figures and the export call the same commands a user types, so what they measure is
what a user gets. The bundle folder ``cwd`` is put on ``PYTHONPATH`` so that its configs'
``$import bundle`` finds that folder's package (an exported task folder carries its own copy).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


def merged_config(files: Sequence[str | os.PathLike], overrides: Mapping | None = None) -> dict:
    """The config a command runs with: ``files`` merged as ``--config_file`` merges them, then
    ``overrides`` set as ``--key value`` sets them (unresolved, as written)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    for name, value in (overrides or {}).items():
        parser[name] = value
    return parser.get()


def bundle_args(command: str, config_files: Sequence[str], overrides: Mapping | None = None) -> list[str]:
    """Arguments of ``python -m monai.bundle <command> --config_file [...] --key value ...``.

    ``command`` is ``monai.bundle``'s sub-command and its positional arguments, e.g. ``"run training"``.
    Non-string override values are passed as JSON, as the command line expects; ``True``, ``False``
    and ``None`` as Python literals, which the command line parses back (JSON's ``false`` would stay
    a string, and a true one).
    """
    args = [*command.split(), "--config_file", json.dumps([str(f) for f in config_files])]
    for name, value in (overrides or {}).items():
        if isinstance(value, str):
            text = value
        elif value is None:
            text = "$None"  # monai.bundle drops a plain None override (update_kwargs(ignore_none=True))
        elif isinstance(value, bool):
            text = repr(value)
        else:
            text = json.dumps(value)
        args += [f"--{name}", text]
    return args


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a job scheduler's stop) end this process through ``SystemExit``.

    Python's default SIGTERM action ends the process at once, leaving a bundle command started by
    :func:`run_bundle` running on as an orphan. As an exception, ``subprocess.run`` kills its child
    on the way out. For the experiment scripts' ``main``: call it once, from the main thread.
    """

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def run_bundle(
    args: Sequence[str], cwd: str | os.PathLike, log: IO[str] | None = None, usage: str | os.PathLike | None = None
) -> str:
    """Run ``python -m monai.bundle *args`` in the bundle folder ``cwd``.

    Output goes to ``log`` when given (then ``""`` is returned), else it is returned. A failing
    command raises ``RuntimeError`` with the command and the end of its output. With ``usage``, GNU
    ``time`` writes the command's peak resident memory (KiB) and wall time (s) to that file.
    """
    cwd = Path(cwd)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    if usage is not None:
        cmd = ["/usr/bin/time", "-f", "%M %e", "-o", str(usage), *cmd]
    if log is not None:
        log.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        output = ""
    else:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        output = proc.stdout + proc.stderr
    if proc.returncode:
        tail = output[-3000:] if log is None else f"(see {getattr(log, 'name', 'the log')})"
        raise RuntimeError(f"`monai.bundle {' '.join(args[:3])} ...` failed in {cwd} (exit {proc.returncode}):\n{tail}")
    return output
