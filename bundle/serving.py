"""Run a task bundle in a MONAI Label server for the length of a ``with`` block (tests, benchmarks).

The server is ``scripts/monailabel_app.sh`` of the source project, started in its own process group
and stopped (SIGTERM, then SIGKILL) however the block ends. Requests use only the standard library, so
this runs in the bundle's environment while the server runs in MONAI Label's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    """A started server: its base URL, ``GET /info/`` once the task's models were listed, and the
    seconds from launch to then."""

    base: str
    info: dict
    startup_s: float

    def infer(
        self, model: str, image_id: str, extension: str = ".png", params: dict | None = None
    ) -> tuple[bytes, str]:
        """``POST /infer/<model>?image=<id>&output=image`` with request ``params`` (e.g. a box): the mask
        file's bytes and content type."""
        query = urllib.parse.urlencode({"image": image_id, "output": "image"})
        form = {"params": json.dumps({"result_extension": extension, **(params or {})})}
        request = urllib.request.Request(
            f"{self.base}/infer/{model}?{query}", data=urllib.parse.urlencode(form).encode()
        )
        with urllib.request.urlopen(request, timeout=600) as r:
            return r.read(), r.headers.get("content-type")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_models(task: Path) -> list[str]:
    """The MONAI Label models ``scripts/monailabel_app.sh`` serves for a task folder: the task, and its
    interactive model ``<task>_deepgrow`` when the folder has ``configs/interactive.json``."""
    interactive = (Path(task) / "configs" / "interactive.json").is_file()
    return [Path(task).name] + ([f"{Path(task).name}_deepgrow"] if interactive else [])


@contextlib.contextmanager
def monailabel_server(
    task: Path,
    studies: Path,
    log_file: Path,
    work: Path | None = None,
    env: dict | None = None,
    python: Path | None = None,
    timeout: float = 600,
) -> Iterator[Server]:
    """Serve ``task`` over ``studies`` with MONAI Label; yield once every model of the task is listed.

    Args:
        task: an exported task folder (``scripts/export.py``).
        studies: the studies folder (images, ``labels/final/``).
        log_file: the server's output.
        work: the script's work folder (default: a temporary one it removes).
        env: extra environment variables for the server.
        python: MONAI Label's python (default: ``MONAILABEL_PYTHON`` or ``.monailabel-venv/bin/python``).
        timeout: seconds to wait for the models to be listed.
    """
    port = free_port()
    args = ["bash", str(PROJECT / "scripts" / "monailabel_app.sh"), str(task), str(studies), str(port)]
    args += [str(work)] if work else []
    python = python or Path(os.environ.get("MONAILABEL_PYTHON", PROJECT / ".monailabel-venv" / "bin" / "python"))
    server_env = dict(os.environ, MONAILABEL_PYTHON=str(python), **(env or {}))
    wanted = task_models(task)
    start = time.time()
    with open(log_file, "w") as log:
        server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env)
        try:
            base, info = f"http://127.0.0.1:{port}", {}
            while time.time() - start < timeout:
                if server.poll() is not None:
                    raise RuntimeError(f"MONAI Label server ended (code {server.returncode}):\n"
                                       + Path(log_file).read_text()[-4000:])  # fmt: skip
                with contextlib.suppress(OSError, ValueError):
                    with urllib.request.urlopen(f"{base}/info/", timeout=30) as r:
                        info = json.loads(r.read())
                    if all(m in info.get("models", {}) for m in wanted):
                        break
                time.sleep(1)
            else:
                raise TimeoutError(f"MONAI Label did not list {wanted} in {timeout:.0f} s:\n"
                                   + Path(log_file).read_text()[-4000:])  # fmt: skip
            yield Server(base, info, time.time() - start)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
