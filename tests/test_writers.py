"""Atomic output writers: predictions and metric reports are complete or keep their old version."""

from __future__ import annotations

from pathlib import Path

import monai.handlers.metrics_saver
import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor, PILWriter
from PIL import Image

from bundle.writers import AtomicMetricsSaver, AtomicSaveImaged


def _mask(name: str, value: int = 1, spatial: tuple[int, ...] = (6, 5)) -> dict:
    """A channel-first mask as the inference post-processing hands it over: a 2D PNG or a 3D volume."""
    pred = torch.zeros(1, *spatial, dtype=torch.uint8)
    pred[0, ..., 1:4, 2:4] = value
    return {"pred": MetaTensor(pred, meta={"filename_or_obj": f"/data/{name}.png"})}


@pytest.mark.parametrize(("ext", "spatial"), [(".png", (6, 5)), (".nii.gz", (4, 6, 5))])
def test_saved_mask_is_readable_and_no_temporary_is_left(tmp_path, ext, spatial):
    save = AtomicSaveImaged(keys="pred", output_dir=tmp_path, output_postfix="", output_ext=ext,
                            output_dtype=np.uint8, resample=False, separate_folder=False, print_log=False)  # fmt: skip
    save(_mask("case1", spatial=spatial))
    assert [p.name for p in tmp_path.iterdir()] == [f"case1{ext}"]
    saved = tmp_path / f"case1{ext}"
    array = np.asarray(Image.open(saved)) if ext == ".png" else np.asarray(nib.load(saved).dataobj)
    assert array.max() == 1 and array.sum() == 6 * (spatial[0] if len(spatial) == 3 else 1)  # 3 x 2 per slice
    assert all(w.__name__.startswith("Atomic") for w in save.saver.writers)


class _HalfWriter(PILWriter):
    """A writer that dies part-way through the file, like a killed job or a full disk."""

    def write(self, filename, verbose=True, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("No space left on device")


def test_failed_save_keeps_the_previous_mask(tmp_path):
    kwargs = dict(keys="pred", output_dir=tmp_path, output_postfix="", output_ext=".png", output_dtype=np.uint8,
                  resample=False, separate_folder=False, print_log=False)  # fmt: skip
    AtomicSaveImaged(**kwargs)(_mask("case1"))
    before = (tmp_path / "case1.png").read_bytes()
    with pytest.raises(RuntimeError, match="case1.png"):
        AtomicSaveImaged(writer=_HalfWriter, **kwargs)(_mask("case1", value=0))
    assert (tmp_path / "case1.png").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["case1.png"]


def _evaluated_engine() -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"val_mean_dice": 0.8}
    engine.state.metric_details = {"val_mean_dice": torch.tensor([[0.7], [0.9]])}
    return engine


def _saver(save_dir) -> AtomicMetricsSaver:
    saver = AtomicMetricsSaver(save_dir=str(save_dir), metrics="*", metric_details="*", summary_ops="*")
    saver._filenames = ["a.png", "b.png"]  # what its ITERATION_COMPLETED handler collects
    return saver


def test_metric_reports_are_written_and_no_temporary_folder_is_left(tmp_path):
    _saver(tmp_path / "eval")(_evaluated_engine())
    names = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert names == ["metrics.csv", "val_mean_dice_raw.csv", "val_mean_dice_summary.csv"]
    raw = (tmp_path / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert raw[1].startswith("a.png") and "0.7" in raw[1] and raw[2].startswith("b.png")
    assert "0.8" in (tmp_path / "eval" / "metrics.csv").read_text()


def test_failed_report_keeps_the_previous_reports(tmp_path, monkeypatch):
    out = tmp_path / "eval"
    _saver(out)(_evaluated_engine())
    before = {p.name: p.read_text() for p in out.iterdir()}

    def dies_half_way(save_dir, **kwargs):
        (Path(save_dir) / "metrics.csv").write_text("val_mean_")
        raise OSError("No space left on device")

    monkeypatch.setattr(monai.handlers.metrics_saver, "write_metrics_reports", dies_half_way)
    failing = _saver(out)
    with pytest.raises(OSError, match="No space"):
        failing(_evaluated_engine())
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    assert failing.save_dir == str(out)  # the next evaluation writes to the real folder again


def test_inputs_sharing_a_stem_get_distinct_masks(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("case.png", "case.jpg", "solo.png"):
        (src / name).write_bytes(b"an input")
    out = tmp_path / "out"
    save = AtomicSaveImaged(keys="pred", output_dir=out, output_postfix="", output_ext=".png", output_dtype=np.uint8,
                            resample=False, separate_folder=False, print_log=False)  # fmt: skip
    for name in ("case.png", "case.jpg", "solo.png"):
        mask = _mask("x")
        mask["pred"].meta["filename_or_obj"] = str(src / name)
        save(mask)
    assert sorted(p.name for p in out.iterdir()) == ["case_jpg.png", "case_png.png", "solo.png"]
