"""Volumes: reading (NIfTI, DICOM series), intensities, slicing, few-shot training from volumes,
volume inference and its read-back checks, the size constraint and 3D scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.data.volumes import (
    VolumeSlicer,
    VolumeSlicing,
    ct_window,
    decathlon_datalist,
    structure_value_map,
    volume_datalist,
    volume_load_transforms,
)
from bundle.errors import BundleInputError
from bundle.networks import TokenBank
from bundle.postprocessing import SizeConstraintd

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--backbone", "sam_tiny")


def _bundle(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip


def _phantom(shape=(40, 36, 14), seed=0, shift=0):
    """A CT-like phantom: body at 40 HU in air, an ellipsoid 'liver' (label 6) and a ball 'spleen' (label 2)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    image = np.full(shape, -1000.0)
    body = ((x - 20) / 18) ** 2 + ((y - 18) / 16) ** 2 < 1
    image[body] = 40
    label = np.zeros(shape, np.uint8)
    liver = ((x - 14 - shift) / 8) ** 2 + ((y - 18) / 7) ** 2 + ((z - 7) / 4) ** 2 < 1
    spleen = ((x - 29) / 4) ** 2 + ((y - 14) / 4) ** 2 + ((z - 6) / 3) ** 2 < 1
    image[liver], label[liver] = 120, 6
    image[spleen], label[spleen] = 200, 2
    image += rng.normal(0, 5, shape)
    return image.astype(np.int16), label


def _decathlon(root: Path, n: int = 4) -> Path:
    affine = np.diag([-0.9, -0.9, 2.5, 1.0])  # LPS-like, as DICOM-derived NIfTIs often are
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, label = _phantom(seed=i, shift=i % 2)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case_{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{i}.nii.gz")
    return root


def test_slicer_planes_are_upright_and_invert_exactly():
    volume = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(1, 3, 4, 5)  # C x L x P x S
    for axis in (0, 1, 2):
        slicer = VolumeSlicer(axis)
        plane = slicer.plane(volume, 1)
        assert torch.equal(slicer.from_upright(plane), volume.select(1 + axis, 1))
    axial = VolumeSlicer(2).plane(volume, 0)[0]
    assert axial.shape == (4, 3)  # rows: posterior (P) downwards, columns: towards the left (L)
    assert torch.equal(axial[:, 0], volume[0, 0, :, 0]) and torch.equal(axial[0], volume[0, :, 0, 0])
    coronal = VolumeSlicer(1).plane(volume, 0)[0]
    assert torch.equal(coronal[0], volume[0, :, 0, -1])  # superior at the top
    three = VolumeSlicer(2, context=1).image(volume * 10, 0)
    assert three.shape == (3, 4, 3) and torch.equal(three[0], three[1])  # the first slice repeats itself
    for axis in (0, 1, 2):  # --slice_flip_vertical: the same plane upside down, and back exactly
        flipped = VolumeSlicer(axis, flip_vertical=True)
        plane = flipped.plane(volume, 1)
        assert torch.equal(plane, VolumeSlicer(axis).plane(volume, 1).flip(-2))
        assert torch.equal(flipped.from_upright(plane), volume.select(1 + axis, 1))
    assert torch.equal(VolumeSlicer(2, flip_vertical=True).plane(volume, 0)[0][0], volume[0, :, -1, 0])  # P at the top


def test_ct_windows_structures_and_bad_settings():
    assert ct_window("abdomen") == (-160.0, 240.0) and ct_window([75, 400]) == (-125.0, 275.0)
    with pytest.raises(BundleInputError, match="--ct_window soft: unknown preset"):
        ct_window("soft")
    with pytest.raises(BundleInputError, match=r"\[centre, width\]"):
        ct_window([40, -5])
    assert structure_value_map({"liver": 6, "spleen": 1}) == {6: 1, 1: 2}
    with pytest.raises(BundleInputError, match="distinct"):
        structure_value_map({"a": 1, "b": 1})
    with pytest.raises(BundleInputError, match="--modality pet"):
        VolumeSlicing({"liver": 6}, modality="pet")


def test_volumes_are_read_in_lps_with_their_spacing_and_windowed(tmp_path):
    image, _ = _phantom()
    nib.save(nib.Nifti1Image(image, np.diag([0.9, 0.8, 2.5, 1.0])), tmp_path / "ras.nii.gz")  # RAS on disk
    from monai.transforms import Compose

    out = Compose(volume_load_transforms("ct", "abdomen"))({"image": str(tmp_path / "ras.nii.gz")})["image"]
    affine = np.asarray(out.affine)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.9, 0.8, 2.5], rtol=1e-6)
    # MONAI keeps world coordinates in RAS: an LPS array has decreasing x and y
    assert affine[0, 0] < 0 and affine[1, 1] < 0 and affine[2, 2] > 0
    assert float(out.min()) == 0.0  # air clipped by the window
    np.testing.assert_allclose(out[0].numpy(), np.clip((image[::-1, ::-1] + 160) / 400 * 255, 0, 255), atol=1e-3)


def test_training_slices_are_split_by_volume_and_empty_slices_subsampled(tmp_path):
    items = decathlon_datalist(_decathlon(tmp_path / "data"))
    assert [i["id"] for i in items] == ["case_0", "case_1", "case_2", "case_3"]
    slicing = VolumeSlicing({"liver": 6, "spleen": 2}, modality="ct", empty_ratio=0.5, cache_dir=str(tmp_path / "s"))
    lower, upper = slicing.halves(items[:3])
    assert {s["volume"] for s in lower} == {"case_0", "case_1"} and {s["volume"] for s in upper} == {"case_2"}
    index = json.loads(next((tmp_path / "s").glob("case_2-*/slices.json")).read_text())
    full = sum(s["foreground"] for s in index["slices"])
    assert len(upper) == full + round(0.5 * full) < len(index["slices"])
    assert lower == slicing.halves(items[:3])[0]  # the same draw again (seeded), read from the cache
    one, same = slicing.halves(items[:1])
    assert one == same and {s["volume"] for s in one} == {"case_0"}  # a single volume feeds both levels
    # a single-level --method trains on every chosen slice once: D1 + D2, or the one volume's slices
    from bundle.data import all_labelled

    assert all_labelled((lower, upper)) == lower + upper and all_labelled((one, same)) == one
    # a label slice holds the structures' own values, read back through the training chain's value map
    from PIL import Image

    values = set(np.unique(np.asarray(Image.open(upper[len(upper) // 2]["label"]))))
    assert values <= {0, 2, 6} and values & {2, 6}
    prior = slicing.size_prior(items[:2])
    true_ml = [float((_phantom(seed=i, shift=i % 2)[1] == 6).sum()) * 0.9 * 0.9 * 2.5 / 1000 for i in (0, 1)]
    assert prior["liver"] == pytest.approx(np.mean(true_ml), rel=1e-6)
    with pytest.raises(BundleInputError, match="none of the structures"):
        VolumeSlicing({"kidney": 3}, cache_dir=str(tmp_path / "s")).slices(items[:1])


def test_decathlon_folder_errors_name_the_problem(tmp_path):
    data = _decathlon(tmp_path / "data", n=2)
    (data / "labelsTr" / "case_1.nii.gz").unlink()
    assert [i["id"] for i in decathlon_datalist(data)] == ["case_0"]  # the unlabelled image is left out
    (data / "labelsTr" / "case_0.nii.gz").unlink()
    with pytest.raises(BundleInputError, match="no labelled volumes"):
        decathlon_datalist(data)
    with pytest.raises(BundleInputError, match="imagesTr/ not found"):
        decathlon_datalist(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleInputError, match="no volumes"):
        volume_datalist(tmp_path / "empty")


def test_size_constraint_moves_a_class_into_the_prior_interval():
    logits = torch.zeros(3, 20, 20, 10)
    yy = torch.arange(20).float()[:, None, None].expand(20, 20, 10)
    ties = torch.linspace(0, 0.5, 4000).reshape(20, 20, 10)  # no two voxels equally confident
    logits[1] = 10.0 - yy - ties  # class 1 wherever row < 10: 2000 voxels
    logits[2, :2, :2, :2] = 50.0  # class 2: 8 voxels
    image = MetaTensor(logits, affine=torch.diag(torch.tensor([2.0, 2.0, 2.5, 1.0])))  # 10 uL per voxel
    ml = 0.01
    constraint = SizeConstraintd("pred", {"a": 1000 * ml, "b": 8 * ml}, margin=0.2)
    out = constraint({"pred": image})["pred"]
    counts = [int((out.argmax(0) == c).sum()) for c in (1, 2)]
    assert counts[0] == 1200  # moved to the nearest bound
    assert counts[1] == 8 and constraint.adjusted[1]["offset"] == 0.0  # inside its interval: untouched
    assert (out.argmax(0) == 1)[2:5].all() and not (out.argmax(0) == 1)[7:].any()  # the most confident kept
    assert SizeConstraintd("pred", None)({"pred": image})["pred"] is image


def test_scores_are_3d_dice_and_hd95_in_mm(tmp_path):
    from bundle.experiments.volumes import score_volume

    _, label = _phantom()
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    pred = np.zeros_like(label)
    pred[label == 6] = 1
    pred[label == 2] = 2
    shifted = np.roll(pred, 2, axis=2)  # two slices (5 mm) off
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    nib.save(nib.Nifti1Image(pred, affine), tmp_path / "pred.nii.gz")
    nib.save(nib.Nifti1Image(shifted, affine), tmp_path / "shifted.nii.gz")
    structures = {"liver": 6, "spleen": 2}
    exact = score_volume(tmp_path / "pred.nii.gz", tmp_path / "label.nii.gz", structures)
    assert exact["liver"]["dice"] == 1.0 and exact["spleen"]["hd95_mm"] == 0.0
    off = score_volume(tmp_path / "shifted.nii.gz", tmp_path / "label.nii.gz", structures)
    assert off["liver"]["dice"] < 1.0 and off["liver"]["hd95_mm"] == pytest.approx(5.0, abs=0.01)


@pytest.mark.parametrize("shots", [1, 2])
def test_single_level_method_trains_on_each_support_slice_once(tmp_path, shots):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / "decathlon.json")])
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(_decathlon(tmp_path / "data", n=4)), "method": "joint",
                   "structures": {"liver": 6, "spleen": 2}, "shots": shots, "test_size": 1, "backbone": "sam_tiny",
                   "slice_dir": str(tmp_path / "slices"), "ckpt_dir": str(tmp_path / "models")})  # fmt: skip
    lower, upper = parser.get_parsed_content("train#halves")
    ids = [i["id"] for i in parser.get_parsed_content("train#lower_dataset").data]
    assert sorted(ids) == sorted({i["id"] for i in lower + upper}) and len(ids) == len(set(ids))
    assert len({i["volume"] for i in lower + upper}) == shots
    assert parser.get_parsed_content("train#lower_dataloader").batch_size == 4


def test_volume_slices_take_an_augmentation_bank_with_their_labels_kept(tmp_path):
    """--augmentation_bank on volumes: every support slice comes once per view, the views differ and
    the labels stay the structures' class values (nearest interpolation), so the bank of the 2D
    presets works unchanged on CT slices."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / "decathlon.json")])
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(_decathlon(tmp_path / "data", n=3)), "method": "joint",
                   "structures": {"liver": 6, "spleen": 2}, "shots": 1, "test_size": 1, "backbone": "sam_tiny",
                   "augmentation": "radiograph_lateral", "augmentation_bank": 3,
                   "slice_dir": str(tmp_path / "slices"), "ckpt_dir": str(tmp_path / "models")})  # fmt: skip
    lower, upper = parser.get_parsed_content("train#halves")
    dataset = parser.get_parsed_content("train#lower_dataset")
    slices = {i["id"] for i in lower + upper}  # one volume: both levels hold its slices, joint takes each once
    assert len(dataset) == 3 * len(slices)
    assert [d["view"] for d in dataset.data[:3]] == [0, 1, 2] and len({d["id"] for d in dataset.data[:3]}) == 1
    views = [dataset[i] for i in range(3)]
    assert not torch.equal(views[0]["image"], views[1]["image"]) and not torch.equal(
        views[1]["image"], views[2]["image"]
    )
    labelled = [view for view in dataset if torch.as_tensor(view["label"]).max() > 0]
    assert labelled  # warped labels keep class values only: nearest interpolation, not bilinear
    for view in labelled:
        assert set(torch.unique(torch.as_tensor(view["label"])).tolist()) <= {0.0, 1.0, 2.0}


@pytest.mark.slow  # two whole bundle commands (about a minute)
def test_train_on_volumes_then_segment_a_folder_as_the_issue_states(tmp_path):
    """The command-line contract: train on k labelled volumes (Decathlon layout), then segment a folder;
    the masks come back on each input's grid and affine with class values 0..C."""
    data = _decathlon(tmp_path / "data", n=4)
    models = tmp_path / "models"
    proc = _bundle("training", "--config_file", "['configs/train.json','configs/datasets/decathlon.json']",
                   "--dataset_dir", str(data), "--structures", "{'liver': 6, 'spleen': 2}", "--modality", "ct",
                   "--shots", "2", "--test_size", "1", "--seed", "0", *TINY, "--iterations", "3",
                   "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "train"),
                   "--slice_dir", str(tmp_path / "slices"), "--embedding_cache_dir", str(tmp_path / "emb"))  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "D1 (lower level): 1 [case_0]" in log or "D1 (lower level): 1 [" in log
    prior = json.loads((models / "size_prior.json").read_text())
    assert list(prior["volumes_ml"]) == ["liver", "spleen"] and len(prior["support"]) == 2
    assert TokenBank.load(models / "token_bank.pt").num_classes == 3  # the support's tokens, for --token_prior
    inputs = tmp_path / "in"
    inputs.mkdir()
    test = data / "imagesTr" / "case_3.nii.gz"
    (inputs / "case_3.nii.gz").write_bytes(test.read_bytes())
    assert TokenBank.load(models / "token_bank.pt", balance=1.0).vote_weights is not None  # strata stored
    for constraint, tokens, balance in (("false", "false", ""), ("true", "false", ""), ("false", "true", ""),
                                        ("false", "true", "1.0")):  # fmt: skip
        out = tmp_path / f"out_{constraint}_{tokens}{balance}"
        proc = _bundle("--config_file", "['configs/inference.json','configs/volumes.json']",
                       "--input_dir", str(inputs), "--output_dir", str(out), "--modality", "ct",
                       "--ckpt", str(models / "model.pt"), *TINY, "--size_constraint", constraint,
                       "--token_prior", tokens, *(("--token_prior_balance", balance) if balance else ()))  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        mask, source = nib.load(out / "case_3.nii.gz"), nib.load(test)
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    # --token_prior auto (the default): the bank beside the checkpoint when there is one (as true), the plain pass
    # with a warning naming the file when the checkpoint has none (a model trained on 2D images, an export without it)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.pt").write_bytes((models / "model.pt").read_bytes())
    # auto is the default: the runs below name no --token_prior
    assert json.loads((ROOT / "configs" / "volumes.json").read_text())["token_prior"] == "auto"
    for ckpt, same_as in ((models / "model.pt", "out_false_true"), (alone / "model.pt", "out_false_false")):
        out = tmp_path / f"out_auto_{ckpt.parent.name}"
        proc = _bundle("--config_file", "['configs/inference.json','configs/volumes.json']",
                       "--input_dir", str(inputs), "--output_dir", str(out), "--modality", "ct",
                       "--ckpt", str(ckpt), *TINY)  # fmt: skip
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        warned = f"no token bank at {alone / 'token_bank.pt'}" in log
        assert warned == (ckpt.parent == alone), log[-3000:]
        np.testing.assert_array_equal(nib.load(out / "case_3.nii.gz").get_fdata(),
                                      nib.load(tmp_path / same_as / "case_3.nii.gz").get_fdata())  # fmt: skip

    # exported for MONAI Label / the Model Zoo, the task keeps the volume settings it was trained with
    # (CT windowing, not volumes.json's MR default; the class names, not an unresolved @structures) and
    # its size prior, so the exported folder segments exactly as the command above did
    from bundle.export import export_task

    configs = [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / "decathlon.json")]
    overrides = {"structures": {"liver": 6, "spleen": 2}, "modality": "ct", "backbone": "sam_tiny"}
    task = export_task(models / "model.pt", configs, "abdomen_ct", tmp_path / "dist", overrides=overrides,
                       torchscript=False, onnx=False, make_zip=False, volumes=True).folder  # fmt: skip
    exported = json.loads((task / "configs" / "inference.json").read_text())
    assert exported["modality"] == "ct" and exported["ct_window"] == "abdomen"
    assert exported["class_names"] == ["liver", "spleen"] and exported["postprocess_components"] == 1
    assert json.loads((task / "models" / "size_prior.json").read_text()) == prior
    assert (task / "models" / "token_bank.pt").read_bytes() == (models / "token_bank.pt").read_bytes()
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    # the exported folder's default is the token prior from the bank that travelled with the model
    for options, made in ((("--size_constraint", "true", "--token_prior", "false"), "out_true_false"),
                          ((), "out_false_true")):  # fmt: skip
        out = tmp_path / f"out_exported_{made}"
        proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                               "--input_dir", str(inputs), "--output_dir", str(out), *options],
                              cwd=task, env=env, capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        np.testing.assert_array_equal(nib.load(out / "case_3.nii.gz").get_fdata(),
                                      nib.load(tmp_path / made / "case_3.nii.gz").get_fdata())  # fmt: skip


def test_a_dicom_series_folder_is_one_volume_and_comes_back_on_its_grid(real_data, tmp_path):
    """The shared CT sample's 20-file DICOM series, segmented as a sub-folder of the input folder:
    the NIfTI written has the series' shape, spacing and world geometry (checked against SimpleITK)."""
    import SimpleITK as sitk  # noqa: N813 (the name SimpleITK documents)

    from bundle.networks import BLOSAM

    series = real_data / "ct-sample" / "dicom"
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "chest").symlink_to(series, target_is_directory=True)
    assert volume_datalist(inputs) == [{"image": str(inputs / "chest"), "id": "chest"}]
    torch.manual_seed(0)
    torch.save(BLOSAM("sam_tiny", num_classes=2, prompt="dense").state_dict(), tmp_path / "tiny.pt")
    out = tmp_path / "out"
    proc = _bundle("--config_file", "['configs/inference.json','configs/volumes.json']", "--input_dir", str(inputs),
                   "--output_dir", str(out), "--modality", "ct", "--ckpt", str(tmp_path / "tiny.pt"), *TINY,
                   "--prompt", "dense", "--class_names", "['lung','body']")  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    written = nib.load(out / "chest.nii.gz")
    reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    assert written.shape == reference.GetSize()
    np.testing.assert_allclose(written.header.get_zooms(), reference.GetSpacing(), rtol=1e-5)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    # every voxel centre lands on the same point in the patient: NIfTI's RAS world = ITK's LPS world, x and y negated
    for ijk in ([0, 0, 0], [511, 0, 19], [100, 300, 7]):
        ras = written.affine @ np.array([*ijk, 1.0])
        k = int(round(reference.TransformPhysicalPointToContinuousIndex((-ras[0], -ras[1], ras[2]))[2]))
        lps = reference.TransformIndexToPhysicalPoint((ijk[0], ijk[1], k))
        np.testing.assert_allclose([-ras[0], -ras[1], ras[2]], lps, atol=1e-3)

    # DICOM-SEG beside it: one segment per class, each covering the NIfTI's voxels of that class on every slice
    import highdicom as hd

    from bundle.dicom_seg import labels_on_series, read_series

    seg = hd.seg.segread(str(out / "chest_seg.dcm"))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["lung", "body"]
    datasets = read_series(series)
    frames = labels_on_series(np.asarray(written.dataobj), written.affine, datasets)
    for c in (1, 2):
        stored = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[d.SOPInstanceUID for d in datasets], segment_numbers=[c],
            assert_missing_frames_are_empty=True,
        )[..., 0]  # fmt: skip
        np.testing.assert_array_equal(stored.astype(bool), frames == c)


def test_a_mask_that_does_not_read_back_as_written_is_reported(tmp_path):
    from bundle.writers import CheckWrittenVolumed

    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    labels = np.zeros((8, 6, 4), np.uint8)
    labels[2:5, 1:4, 1:3] = 1
    pred = MetaTensor(torch.from_numpy(labels)[None], affine=torch.from_numpy(affine),
                      meta={"filename_or_obj": str(tmp_path / "case.nii.gz"), "spatial_shape": (8, 6, 4),
                            "original_affine": affine})  # fmt: skip
    (tmp_path / "case.nii.gz").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    check = CheckWrittenVolumed("pred", str(out))
    nib.save(nib.Nifti1Image(labels, affine), out / "case.nii.gz")
    check({"pred": pred})  # as written: passes
    nib.save(nib.Nifti1Image(labels, np.diag([1.0, 0.9, 2.5, 1.0])), out / "case.nii.gz")
    with pytest.raises(RuntimeError, match=r"case\.nii\.gz: read back with affine"):
        check({"pred": pred})
    shifted = np.roll(labels, 1, axis=0)
    nib.save(nib.Nifti1Image(shifted, affine), out / "case.nii.gz")
    with pytest.raises(RuntimeError, match="labels that differ"):
        check({"pred": pred})


@pytest.mark.parametrize("context, flip", [(0, False), (1, False), (0, True)])
def test_a_training_slice_reaches_the_network_as_the_same_slice_does_at_inference(tmp_path, context, flip):
    """The invariant of the volume path: the slice PNG read by the 2D training chain and the slice taken
    from the volume by SliceWiseInferer give the network the same input."""
    from monai.transforms import Compose

    from bundle.inferers import SliceWiseInferer, fit_longest_side
    from bundle.preprocessing import fit_transforms, load_transforms, pad_transforms

    items = decathlon_datalist(_decathlon(tmp_path / "data", n=1))
    slicing = VolumeSlicing(
        {"liver": 6}, modality="ct", context=context, flip_vertical=flip, cache_dir=str(tmp_path / "s")
    )
    chosen = slicing.slices(items)[3]
    index = int(chosen["id"].rsplit("_", 1)[1])
    size = 64
    train = Compose(load_transforms("litemedsam", input_size=size) + fit_transforms(size) + pad_transforms(size))
    x_train = train({"image": chosen["image"]})["image"]
    volume = Compose(volume_load_transforms("ct", "abdomen"))({"image": items[0]["image"]})["image"]
    inferer = SliceWiseInferer(size, backbone="litemedsam", context=context, flip_vertical=flip)
    x_infer, _ = fit_longest_side(inferer.slice_input(volume.as_tensor(), index)[None], size)
    torch.testing.assert_close(torch.as_tensor(x_train), x_infer[0], atol=1e-5, rtol=0)


def test_a_resumed_volume_run_must_have_the_same_slicing_settings(tmp_path):
    """The resume fingerprint holds the volume settings: a checkpoint from another window, axis, context or
    empty-slice ratio is not resumed (the same settings give the same fingerprint)."""
    from monai.bundle import ConfigParser

    data = _decathlon(tmp_path / "data", n=3)

    def fingerprint(**overrides) -> str:
        parser = ConfigParser()
        parser.read_config(
            [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / "decathlon.json")]
        )
        parser.update({"dataset_dir": str(data), "test_size": 1, "structures": {"liver": 6}, **overrides})
        handlers = parser["train"]["handlers"]
        index = next(
            i for i, h in enumerate(handlers) if isinstance(h, dict) and h["_target_"].endswith("ResumableTraining")
        )
        return repr(parser.get_parsed_content(f"train#handlers#{index}#fingerprint"))

    base = fingerprint()
    assert fingerprint() == base
    assert fingerprint(slice_flip_vertical="false") == base  # as typed on the command line
    for change in ({"ct_window": "lung"}, {"slice_axis": "coronal"}, {"slice_context": 1}, {"slice_flip_vertical": True},
                   {"empty_slice_ratio": 0.5}, {"modality": "mr"}, {"dice_present_only": False}, {"structures": {"spleen": 2}}):  # fmt: skip
        assert fingerprint(**change) != base, change


def test_class_balance_repeats_the_slices_of_rarer_structures(tmp_path):
    """Repeat factor sampling: every structure drawn about equally often, empty slices once, off by default."""
    from PIL import Image

    from bundle.data.volumes import class_balanced

    def item(name: str, values: list[int]) -> dict:
        plane = np.zeros((8, 8), np.uint8)
        for i, v in enumerate(values):
            plane[i, :] = v
        Image.fromarray(plane).save(tmp_path / f"{name}.png")
        return {"image": name, "label": str(tmp_path / f"{name}.png"), "id": name}

    # liver (6) on 6 slices, kidney (3) on 2 of them and on 1 alone, 2 empty slices
    items = [item(f"l{i}", [6]) for i in range(4)] + [item("lk0", [6, 3]), item("lk1", [6, 3]), item("k", [3])]
    items += [item("e0", []), item("e1", [])]
    out = class_balanced(items, [3, 6])
    counts = {name: sum(i["id"] == name for i in out) for name in [i["id"] for i in items]}
    assert counts == {"l0": 1, "l1": 1, "l2": 1, "l3": 1, "lk0": 2, "lk1": 2, "k": 2, "e0": 1, "e1": 1}
    held = {i["id"]: c for i, c in zip(items, [{6}] * 4 + [{6, 3}] * 2 + [{3}] + [set()] * 2, strict=True)}
    drawn = {c: sum(c in held[i["id"]] for i in out) for c in (3, 6)}
    assert drawn == {3: 6, 6: 8}  # the kidney was on 3 of 9 slices, now on 6 of 12
    assert class_balanced(items[:4], [6]) == items[:4]  # one class: unchanged
    assert [i["id"] for i in out] == sorted([i["id"] for i in out], key=[i["id"] for i in items].index)  # order kept

    data = decathlon_datalist(_decathlon(tmp_path / "data"))
    plain = VolumeSlicing({"liver": 6, "spleen": 2}, cache_dir=str(tmp_path / "s")).halves(data[:2])
    balanced = VolumeSlicing({"liver": 6, "spleen": 2}, class_balance="true", cache_dir=str(tmp_path / "s")).halves(
        data[:2]
    )
    for before, after in zip(plain, balanced, strict=True):
        assert {i["id"] for i in after} == {i["id"] for i in before} and len(after) >= len(before)
    assert sum(map(len, balanced)) > sum(map(len, plain))  # the phantoms' spleen is on fewer slices
    with pytest.raises(BundleInputError, match="--slice_class_balance"):
        VolumeSlicing({"liver": 6}, class_balance="maybe")


def test_slice_class_balance_reaches_the_training_halves_through_the_config(tmp_path):
    from monai.bundle import ConfigParser

    def halves(balance: str) -> tuple[list[dict], list[dict]]:
        parser = ConfigParser()
        parser.read_config(
            [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / "decathlon.json")]
        )
        parser.update({"bundle_root": str(ROOT), "dataset_dir": str(tmp_path / "data"), "slice_class_balance": balance,
                       "structures": {"liver": 6, "spleen": 2}, "shots": 2, "test_size": 1, "backbone": "sam_tiny",
                       "slice_dir": str(tmp_path / "slices"), "ckpt_dir": str(tmp_path / "models")})  # fmt: skip
        return parser.get_parsed_content("train#halves")

    _decathlon(tmp_path / "data", n=4)
    plain, balanced = halves("false"), halves("true")
    assert sum(map(len, balanced)) > sum(map(len, plain))
    assert [{i["id"] for i in h} for h in balanced] == [{i["id"] for i in h} for h in plain]


def test_the_report_overlay_cuts_no_test_volumes_beside_a_record_without_predictions(tmp_path):
    """The committed record keeps no predicted volumes: redrawing the report from it must not write cut
    copies of the (research-use) test volumes into the record's folder; with predictions the figure is drawn."""
    from bundle.experiments.volumes import VOLUME_DATASETS, VolumeRun, VolumeSettings, overlay_planes

    data = VOLUME_DATASETS["btcv"]
    source = _decathlon(tmp_path / "btcv", n=data.test_size + 1)
    root, run = tmp_path / "record", VolumeRun("btcv", 1, 0, "blo-sam")
    settings = VolumeSettings(root, {"btcv": str(source)})
    figure = tmp_path / "overlay.png"
    assert overlay_planes(run, settings, figure) is None
    assert not (root / "btcv").exists() and not figure.exists()
    first = decathlon_datalist(str(source))[-data.test_size]
    label = nib.load(first["label"])
    (run.folder(root) / "pred").mkdir(parents=True)
    pred = (np.asarray(label.dataobj) == 6).astype(np.uint8)  # liver only, on the uncut grid
    nib.save(nib.Nifti1Image(pred, label.affine), run.folder(root) / "pred" / f"{first['id']}.nii.gz")
    assert overlay_planes(run, settings, figure) == figure and figure.stat().st_size > 0
    assert (root / "btcv" / "test" / "images").is_dir()  # the cut test volumes, where the runner puts them
