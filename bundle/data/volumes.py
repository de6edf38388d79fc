"""Volumes (CT, MR) for the slice-wise model: reading, intensities, slicing, and slice training data.

One data path serves training and inference, so a slice reaches the network the same way in both:

1. **read** (:func:`volume_load_transforms`): MONAI's readers (NIfTI through nibabel, a folder holding
   one DICOM series through pydicom), channel first, non-finite voxels replaced, then MONAI's
   ``Orientationd`` to **LPS** (DICOM's patient axes; the spacing is kept, only axes are permuted or
   flipped), then intensities to 0..255: a CT window (``ct_window``: centre and width in HU, or a
   preset of :data:`CT_WINDOWS`) or, for MR, the volume's 0.5-99.5 percentiles;
2. **slice** (:class:`VolumeSlicer`): planes along ``axis`` (axial by default), upright in the
   radiological convention (anterior or superior at the top, the patient's right on the left, as the
   SAM-family encoders saw medical slices), rounded to 8-bit grey levels; with ``context`` 1 the
   neighbouring slices fill the other two of the encoder's three input channels (2.5D).

Training (:class:`VolumeSlicing`) writes the chosen slices of the k support volumes once, as 8-bit
PNGs with their label planes, into a cache folder; the 2D training chain reads them as it reads any
image (the intensity normalisation of the backbone is per slice in both). D1 and D2 are split by
volume, never by slice. Inference (:class:`bundle.inferers.SliceWiseInferer`) takes the same slices
from the volume in memory and puts each slice's logits back on the volume's grid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from bundle.atomic import atomic_path, write_json_atomically
from bundle.data.readers import DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, LoadAnyImaged
from bundle.errors import BundleInputError, MissingInputError
from bundle.transforms import FiniteIntensityd

logger = logging.getLogger(__name__)
IMAGE, LABEL = "image", "label"

ORIENTATION = "LPS"
# Window presets (centre, width) in HU, as radiology viewers name them.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
MODALITIES = ("ct", "mr")
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
MR_PERCENTILES = (0.5, 99.5)


def ct_window(window: str | Sequence[float]) -> tuple[float, float]:
    """The (lowest, highest) HU of a window given as a preset name or ``[centre, width]``."""
    if isinstance(window, str):
        if window.lower() not in CT_WINDOWS:
            raise BundleInputError(
                f"--ct_window {window}: unknown preset; use one of {', '.join(CT_WINDOWS)} or [centre, width] in HU"
            )
        centre, width = CT_WINDOWS[window.lower()]
    else:
        values = [float(v) for v in window]
        if len(values) != 2 or values[1] <= 0:
            raise BundleInputError(f"--ct_window {list(window)}: give [centre, width] in HU with width > 0")
        centre, width = values
    return centre - width / 2, centre + width / 2


def slice_axis(axis: str | int) -> int:
    """Array axis (0, 1, 2 of an LPS volume) of ``axial`` / ``coronal`` / ``sagittal`` or an index."""
    if isinstance(axis, str) and axis.lower() in AXES:
        return AXES[axis.lower()]
    if isinstance(axis, int) and axis in (0, 1, 2):
        return axis
    raise BundleInputError(f"--slice_axis {axis}: use axial, coronal, sagittal (or 2, 1, 0)")


def intensity_transform(modality: str, window: str | Sequence[float] = "abdomen", keys: str = IMAGE) -> MapTransform:
    """Intensities to 0..255: the CT window (clipped), or the MR volume's percentiles (clipped)."""
    modality = str(modality).lower()
    if modality == "ct":
        lo, hi = ct_window(window)
        return ScaleIntensityRanged(keys=keys, a_min=lo, a_max=hi, b_min=0.0, b_max=255.0, clip=True)
    if modality == "mr":
        lower, upper = MR_PERCENTILES
        return ScaleIntensityRangePercentilesd(keys=keys, lower=lower, upper=upper, b_min=0.0, b_max=255.0, clip=True)
    raise BundleInputError(f"--modality {modality}: use one of {', '.join(MODALITIES)}")


def volume_load_transforms(
    modality: str = "mr", window: str | Sequence[float] = "abdomen", nonfinite: str = "min", with_label: bool = False
) -> list[MapTransform]:
    """Read a volume (and its label map, kept as stored), orient it to LPS, intensities to 0..255."""
    keys = [IMAGE, LABEL] if with_label else [IMAGE]
    transforms: list[MapTransform] = [
        LoadAnyImaged(keys=keys),
        EnsureChannelFirstd(keys=keys),
        FiniteIntensityd(keys=IMAGE, policy=nonfinite),
        Orientationd(keys=keys, axcodes=ORIENTATION),
        intensity_transform(modality, window),
        EnsureTyped(keys=keys, track_meta=True),
    ]
    return transforms


@dataclass(frozen=True)
class VolumeSlicer:
    """Upright planes of C x X x Y x Z volumes (LPS) along one axis, and their inverse.

    Args:
        axis: the array axis sliced (0 sagittal, 1 coronal, 2 axial).
        context: 0 for plain slices (grey, repeated to 3 channels later), 1 for 2.5D (the slice
            before, the slice, the slice after as the three channels; the end slices repeat).
        flip_vertical: turn every plane upside down as well. For volumes whose header states the
            anterior-posterior (or superior-inferior) direction wrongly, such as the SABS BTCV volumes,
            whose axial slices otherwise reach the network with the spine at the top; the pretrained
            encoder saw slices the right way up.
    """

    axis: int = 2
    context: int = 0
    flip_vertical: bool = False

    def __post_init__(self) -> None:
        # one place reads the switch as typed (``true``, ``"false"``, a JSON bool) for every caller
        object.__setattr__(self, "flip_vertical", switch(self.flip_vertical, "--slice_flip_vertical"))
        if self.axis not in (0, 1, 2):
            raise BundleInputError(f"--slice_axis {self.axis}: use axial, coronal, sagittal (or 2, 1, 0)")
        if self.context not in (0, 1):
            raise BundleInputError(f"--slice_context {self.context}: 0 (plain slices) or 1 (2.5D neighbours)")

    def count(self, volume: Tensor) -> int:
        """Number of slices of a C x X x Y x Z volume."""
        return int(volume.shape[1 + self.axis])

    def upright(self, plane: Tensor) -> Tensor:
        """``... x A x B`` (the two remaining LPS axes in order) -> ``... x rows x columns`` upright."""
        plane = plane.transpose(-1, -2)  # rows: P (axial) or S; columns: L (axial, coronal) or P
        flip = (self.axis != 2) != self.flip_vertical  # superior at the top, unless the header is wrong
        return plane.flip(-2) if flip else plane

    def from_upright(self, plane: Tensor) -> Tensor:
        """The inverse of :meth:`upright`."""
        plane = plane.flip(-2) if (self.axis != 2) != self.flip_vertical else plane
        return plane.transpose(-1, -2)

    def plane(self, volume: Tensor, index: int) -> Tensor:
        """Upright plane ``index`` of every channel: C x rows x columns."""
        return self.upright(volume.select(1 + self.axis, index))

    def image(self, volume: Tensor, index: int) -> Tensor:
        """The network's view of slice ``index`` of a 0..255 volume: 1 or 3 x rows x columns, 8-bit levels."""
        grey = volume[:1]
        if self.context:
            last = self.count(volume) - 1
            planes = [self.plane(grey, min(max(i, 0), last)) for i in (index - 1, index, index + 1)]
            plane = torch.cat(planes, dim=0)
        else:
            plane = self.plane(grey, index)
        return plane.float().round().clamp(0, 255)


def structure_value_map(structures: Mapping[str, int]) -> dict[int, int]:
    """Label value -> class index (1..C, in the order given) of ``{"liver": 6, "spleen": 1}``."""
    if not structures:
        raise BundleInputError("--structures is empty: give the classes as {'name': label value, ...}")
    values = [int(v) for v in structures.values()]
    if len(set(values)) != len(values) or min(values) <= 0:
        raise BundleInputError(f"--structures {dict(structures)}: label values must be distinct and > 0")
    return {value: cls for cls, value in enumerate(values, start=1)}


def volume_files(folder: str | os.PathLike) -> dict[str, str]:
    """``stem -> path`` of the volumes of a folder: NIfTI / NRRD / MHA files, and sub-folders that hold a
    DICOM series (one volume each, named after the folder).

    Raises:
        BundleInputError: two volumes share a name (their outputs would overwrite each other).
    """
    found: dict[str, str] = {}

    def add(stem: str, path: Path) -> None:
        if stem in found:
            raise BundleInputError(f"{path} and {found[stem]} are both volume {stem!r}: rename one of them")
        found[stem] = str(path)

    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if is_dicom_series(path):
                add(path.name, path)
            continue
        lower = path.name.lower()
        for suffix in VOLUME_SUFFIXES:
            if lower.endswith(suffix) and len(lower) > len(suffix):
                add(path.name[: -len(suffix)], path)
                break
    return found


def volume_datalist(input_dir: str | os.PathLike) -> list[dict]:
    """``[{"image": path, "id": name}]`` of the volumes to segment in ``input_dir`` (see :func:`volume_files`).

    Raises:
        MissingInputError: not a folder. BundleInputError: no volume in it.
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise MissingInputError(f"--input_dir {folder}: folder not found; give the folder of volumes to segment")
    found = volume_files(folder)
    if not found:
        raise BundleInputError(
            f"--input_dir {folder}: no volumes (NIfTI / NRRD / MHA files, or sub-folders holding one DICOM series)"
        )
    return [{"image": path, "id": stem} for stem, path in found.items()]


def is_dicom_series(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds DICOM files (``.dcm``, or files with the ``DICM`` preamble)."""
    for path in sorted(Path(folder).iterdir())[:20]:
        if not path.is_file():
            continue
        if path.name.lower().endswith(DICOM_SUFFIXES):
            return True
        try:
            with open(path, "rb") as f:
                head = f.read(132)
        except OSError:
            continue
        if head[128:132] == b"DICM":
            return True
    return False


def decathlon_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """``[{"image", "label", "id"}]`` of a Decathlon-layout folder: ``imagesTr/<id>.nii.gz`` with
    ``labelsTr/<id>.nii.gz`` (a DICOM series folder ``imagesTr/<id>/`` counts as image ``<id>``).

    Images without a label are left out (logged).

    Raises:
        MissingInputError: a folder is missing. BundleInputError: no labelled volume.
    """
    root = Path(dataset_dir)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise MissingInputError(
                f"--dataset_dir {root}: {folder.name}/ not found (Decathlon layout: imagesTr/, labelsTr/)"
            )
    images, labels = volume_files(images_dir), volume_files(labels_dir)
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:  # not training data (the Decathlon keeps unlabelled images in imagesTs/): left out, said
        shown = ", ".join(unlabelled[:5]) + (f" ... ({len(unlabelled)} in all)" if len(unlabelled) > 5 else "")
        logger.warning(
            f"--dataset_dir {root}: left out {len(unlabelled)} image(s) without a label in labelsTr/: {shown}"
        )
    pairs = sorted(set(images) & set(labels))
    if not pairs:
        raise BundleInputError(
            f"--dataset_dir {root}: no labelled volumes (imagesTr/<id>.nii.gz or a DICOM series folder imagesTr/<id>/, "
            "with labelsTr/<id>.nii.gz)"
        )
    return [{"image": images[i], "label": labels[i], "id": i} for i in pairs]


def _file_stamp(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        entries = sorted(p.iterdir())
        return f"{p.resolve()}|{len(entries)}|{max((e.stat().st_mtime_ns for e in entries), default=0)}"
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _write_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp)


@dataclass
class VolumeSlicing:
    """Few-shot training samples from labelled volumes: the slices, the split into levels, the size prior.

    Args:
        structures: class name -> label value (``--structures``); classes are 1..C in this order.
        modality, ct_window: intensities (see :func:`intensity_transform`).
        axis: ``axial`` (default), ``coronal``, ``sagittal`` or 0..2.
        context: 1 for 2.5D inputs (see :class:`VolumeSlicer`).
        flip_vertical: planes upside down (see :class:`VolumeSlicer`; ``--slice_flip_vertical``).
        empty_ratio: slices without any structure kept per slice with one (drawn with ``seed``;
            0 keeps none, a large value all).
        seed: the draw of the empty slices.
        class_balance: repeat the training slices of rarer structures so that every structure is seen
            about equally often (``--slice_class_balance``; see :func:`class_balanced`). Off by default.
        cache_dir: where each volume's slices are written once (a sub-folder per volume and settings).
        nonfinite: as for :class:`bundle.transforms.FiniteIntensityd`.
    """

    structures: Mapping[str, int]
    modality: str = "ct"
    ct_window: Any = "abdomen"
    axis: Any = "axial"
    context: int = 0
    flip_vertical: Any = False
    empty_ratio: float = 0.2
    seed: int = 0
    class_balance: Any = False
    cache_dir: str = ".cache/slices"
    nonfinite: str = "min"

    def __post_init__(self) -> None:
        self.value_map = structure_value_map(self.structures)
        self.slicer = VolumeSlicer(slice_axis(self.axis), int(self.context), self.flip_vertical)
        intensity_transform(self.modality, self.ct_window)  # refuse a bad modality or window now
        if self.empty_ratio < 0:
            raise BundleInputError(f"--empty_slice_ratio {self.empty_ratio} must be >= 0")
        self.class_balance = switch(self.class_balance, "--slice_class_balance")

    def halves(self, volumes: Sequence[dict]) -> tuple[list[dict], list[dict]]:
        """D1 and D2 slice items, split **by volume**: the first ``ceil(n / 2)`` volumes and the rest.

        With a single volume no split by volume exists: both levels then train on its slices (the
        bi-level optimisation reduces to alternating updates on the same data), which is logged.
        """
        volumes = list(volumes)
        if not volumes:
            raise BundleInputError("no labelled volumes to train on (check --dataset_dir and --shots)")
        if len(volumes) == 1:
            logger.warning(f"one labelled volume ({_name(volumes[0])}): D1 and D2 both train on its slices")
            both = self._training(volumes)
            return both, both
        cut = math.ceil(len(volumes) / 2)
        return self._training(volumes[:cut]), self._training(volumes[cut:])

    def _training(self, volumes: Sequence[dict]) -> list[dict]:
        items = self.slices(volumes)
        return class_balanced(items, sorted(self.value_map), self.seed) if self.class_balance else items

    def training_halves(
        self,
        volumes: Sequence[dict],
        prior_file: str | os.PathLike,
        network: torch.nn.Module | None = None,
        bank_file: str | os.PathLike | None = None,
    ) -> tuple[list[dict], list[dict]]:
        """:meth:`halves` of the support volumes, after writing their size prior to ``prior_file`` and, given
        ``network`` and ``bank_file``, their token bank (both beside the checkpoint, for inference's
        ``--size_constraint`` and ``--token_prior``)."""
        self.write_size_prior(volumes, prior_file)
        if network is not None and bank_file is not None:
            self.write_token_bank(volumes, network, bank_file)
        return self.halves(volumes)

    def write_token_bank(self, volumes: Sequence[dict], network: torch.nn.Module, path: str | os.PathLike) -> None:
        """The support volumes' token bank (:func:`bundle.networks.token_bank.build_token_bank`), each slice
        taken as volume inference takes it, written to ``path`` atomically."""
        from bundle.inferers import SliceWiseInferer
        from bundle.networks.token_bank import build_token_bank

        inferer = SliceWiseInferer(network.input_size, axis=self.slicer.axis, context=self.slicer.context,
                                   backbone=network.backbone_name, flip_vertical=self.slicer.flip_vertical)  # fmt: skip
        load = Compose(volume_load_transforms(self.modality, self.ct_window, self.nonfinite, with_label=True))
        build_token_bank(network, volumes, load, self.value_map, inferer, seed=self.seed).save(path)

    def slices(self, volumes: Sequence[dict]) -> list[dict]:
        """The chosen slice items of ``volumes``: every slice with a structure, and empty ones at ``empty_ratio``."""
        items: list[dict] = []
        for volume in volumes:
            index = self._extract(volume)
            full = [s for s in index["slices"] if s["foreground"]]
            empty = [s for s in index["slices"] if not s["foreground"]]
            keep = min(len(empty), int(round(self.empty_ratio * len(full))))
            rng = np.random.default_rng([int(self.seed), zlib.crc32(_name(volume).encode())])
            chosen = sorted(rng.choice(len(empty), size=keep, replace=False).tolist()) if keep else []
            picked = sorted(full + [empty[i] for i in chosen], key=lambda s: s["index"])
            vid = _name(volume)
            items += [
                {"image": s["image"], "label": s["label"], "id": f"{vid}_{s['index']:04d}", "volume": vid}
                for s in picked
            ]
        return items

    def size_prior(self, volumes: Sequence[dict]) -> dict[str, float]:
        """Mean volume (mL) of each structure over ``volumes`` (the k support volumes)."""
        per_class = {name: [] for name in self.structures}
        for volume in volumes:
            sizes = self._extract(volume)["sizes_ml"]
            for name in self.structures:
                per_class[name].append(sizes[name])
        return {name: float(np.mean(v)) for name, v in per_class.items()}

    def write_size_prior(self, volumes: Sequence[dict], path: str | os.PathLike) -> dict:
        """Write :meth:`size_prior` to ``path`` (JSON, atomically) for the size constraint of inference."""
        prior = {"volumes_ml": self.size_prior(volumes), "support": [_name(v) for v in volumes]}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(prior, path)
        return prior

    def _settings(self) -> dict:
        return {
            "value_map": self.value_map,
            "modality": self.modality,
            "ct_window": list(ct_window(self.ct_window)) if self.modality == "ct" else None,
            "axis": self.slicer.axis,
            "context": self.slicer.context,
            **({"flip_vertical": True} if self.slicer.flip_vertical else {}),  # earlier slice folders stay valid
            "nonfinite": self.nonfinite,
            "format": 1,
        }

    def _extract(self, volume: dict) -> dict:
        """Write every slice of one volume (and its label plane) once; return the folder's index."""
        stamp = json.dumps([_file_stamp(volume["image"]), _file_stamp(volume["label"]), self._settings()])
        folder = Path(self.cache_dir) / f"{_name(volume)}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}"
        index_file = folder / "slices.json"
        if index_file.is_file():
            return json.loads(index_file.read_text())
        folder.mkdir(parents=True, exist_ok=True)
        loaded = Compose(volume_load_transforms(self.modality, self.ct_window, self.nonfinite, with_label=True))(
            {IMAGE: volume["image"], LABEL: volume["label"]}
        )
        image, label = loaded[IMAGE], loaded[LABEL]
        if tuple(image.shape[1:]) != tuple(label.shape[1:]):
            raise BundleInputError(
                f"{volume['label']}: label of shape {tuple(label.shape[1:])} does not match its image "
                f"{volume['image']} of shape {tuple(image.shape[1:])}"
            )
        raw = label[:1].as_tensor().round().long()
        kept = torch.zeros_like(raw)
        for value in self.value_map:
            kept[raw == value] = value
        if not bool((kept > 0).any()):
            raise BundleInputError(
                f"{volume['label']}: none of the structures {dict(self.structures)} is present; check --structures"
            )
        spacing = [float(s) for s in np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)]
        voxel_ml = float(np.prod(spacing)) / 1000.0
        sizes = {name: int((kept == int(v)).sum()) * voxel_ml for name, v in self.structures.items()}
        dtype = np.uint8 if max(self.value_map) <= 255 else np.uint16
        slices = []
        for i in tqdm(range(self.slicer.count(image)), desc=f"slicing {_name(volume)}", unit="slice", leave=False):
            pixels = self.slicer.image(image, i).to(torch.uint8).numpy()
            pixels = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
            plane = self.slicer.plane(kept, i)[0].numpy().astype(dtype)
            image_path, label_path = folder / f"{i:04d}.png", folder / f"{i:04d}_label.png"
            _write_png(np.ascontiguousarray(pixels), image_path)
            _write_png(np.ascontiguousarray(plane), label_path)
            slices.append(
                {"index": i, "image": str(image_path), "label": str(label_path), "foreground": bool(plane.any())}
            )
        index = {"volume": _name(volume), "spacing_mm": spacing, "sizes_ml": sizes, "slices": slices}
        write_json_atomically(index, index_file)
        return index


def class_balanced(items: Sequence[dict], classes: Sequence[int], seed: int = 0) -> list[dict]:
    """``items`` with the slices of rarer classes repeated, so that every class is drawn about as often.

    The few-shot loaders draw each item once per pass (:class:`bundle.data.CyclicShuffleSampler`), so a
    class present on few slices (a kidney, against the liver) gets few gradient steps. This is repeat
    factor sampling (Gupta et al., LVIS, CVPR 2019) on a fixed list: class ``c`` on ``n_c`` of the slices
    gets the factor ``max(n) / n_c``; a slice takes the largest factor ``r`` of the classes it holds (1
    if none) and is repeated ``floor(r)`` times, plus once more with probability ``r - floor(r)`` (drawn
    with ``seed``, so that a factor of 1.4 is not rounded away). The repeats follow their slice, so the
    list stays seeded and resumable. A list where every class is equally common comes back unchanged.

    Args:
        items: slice items with a ``label`` PNG (as :meth:`VolumeSlicing.slices` writes them: each
            structure keeps its label value).
        classes: the label values to balance (``--structures``' values).
        seed: the draw of the fractional repeats.
    """
    present = [set(np.unique(np.asarray(Image.open(item[LABEL]))).tolist()) & set(classes) for item in items]
    counts = {c: sum(c in p for p in present) for c in classes}
    most = max(counts.values(), default=0)
    factor = {c: most / n for c, n in counts.items() if n}
    rng = np.random.default_rng([int(seed), len(items)])
    out: list[dict] = []
    for item, held in zip(items, present, strict=True):
        r = max((factor[c] for c in held), default=1.0)
        out += [item] * (math.floor(r) + int(rng.random() < r - math.floor(r)))
    return out


def _name(volume: Mapping) -> str:
    if "id" in volume:
        return str(volume["id"])
    return Path(str(volume["image"])).name.split(".")[0]


def switch(value: Any, option: str) -> bool:
    """A yes/no option as typed on the command line (``true``/``false``, ``1``/``0``, ``yes``/``no``) or from JSON."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", ""):
        return False
    raise BundleInputError(f"{option} {value}: use true or false")


def read_size_prior(path: str | os.PathLike) -> dict[str, float]:
    """The ``volumes_ml`` of a prior written by :meth:`VolumeSlicing.write_size_prior`."""
    if not os.path.isfile(path):
        raise MissingInputError(
            f"size prior {path} not found: it is written by training on volumes (configs/datasets/decathlon.json); "
            "train first or pass --size_prior_file <file> (or leave --size_constraint false)"
        )
    return dict(json.loads(Path(path).read_text())["volumes_ml"])
