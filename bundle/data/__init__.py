"""Data lists, splits, readers and mask loading for BLO-SAM."""

from bundle.data.fewshot import FewShotSplit, all_labelled, few_shot_split, paper_split, split_halves
from bundle.data.folder import folder_datalist, studies_datalist
from bundle.data.inputs import image_datalist
from bundle.data.masks import LoadMaskd
from bundle.data.presets import dental_datalist, jsrt_datalist, kvasir_datalist
from bundle.data.readers import JsrtRawReader, LoadAnyImaged, pil_converter, read_image
from bundle.data.sampling import CyclicShuffleSampler
from bundle.data.volumes import VolumeSlicing, decathlon_datalist

__all__ = [
    "CyclicShuffleSampler",
    "FewShotSplit",
    "JsrtRawReader",
    "LoadAnyImaged",
    "LoadMaskd",
    "VolumeSlicing",
    "decathlon_datalist",
    "dental_datalist",
    "few_shot_split",
    "folder_datalist",
    "image_datalist",
    "jsrt_datalist",
    "kvasir_datalist",
    "paper_split",
    "pil_converter",
    "read_image",
    "split_halves",
    "all_labelled",
    "studies_datalist",
]
