"""Atomic writes: a failed write leaves the old file and no temporary file behind."""

from __future__ import annotations

import pytest
import torch

from bundle.atomic import atomic_path, save_atomically, write_json_atomically


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "model.pt"
    save_atomically({"w": torch.ones(2)}, target)

    def write_half_then_fail() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_half_then_fail()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in target.parent.iterdir()] == ["model.pt"]


def test_successful_writes_replace_the_file(tmp_path):
    target = tmp_path / "done.json"
    write_json_atomically({"a": 1}, target)
    write_json_atomically({"a": 2}, target)
    assert target.read_text() == '{\n  "a": 2\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["done.json"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_keep_the_umask(tmp_path, umask, mode):
    import os

    old = os.umask(umask)
    try:
        save_atomically({"w": torch.ones(1)}, tmp_path / "resume.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "resume.pt").stat().st_mode & 0o777 == mode
