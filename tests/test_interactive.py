"""Interactive correction (configs/interactive.json, bundle.interactive): a user's box or clicks with the
fine-tuned network and its learnt prompt, on 2D images and on one slice of a volume."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from bundle.errors import BundleInputError, find_input_error
from bundle.export import interactive_metadata
from bundle.interactive import PromptedInferer, UserPromptd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


class BoxPainter(torch.nn.Module):
    """A stand-in network whose class-1 logit is +10 inside the box it was prompted with and -10 outside,
    on the model input grid: the mask that comes back shows where the box landed."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.box: torch.Tensor | None = None
        self.points: torch.Tensor | None = None

    def encode(self, images):
        return images.new_zeros((images.shape[0], 1, 1, 1))

    def learnt_prompt(self, batch, dtype):
        return torch.zeros(batch, 1, 2, dtype=dtype), torch.zeros(1, 2, 1, 1, dtype=dtype)

    def prompt_encoder(self, points, boxes, masks):
        self.points = points
        self.box = boxes
        return torch.zeros(1, 3, 2), None

    def decode(self, embeddings, sparse, dense):
        self.tokens = sparse.shape[1]  # the learnt token (1) unless a box replaced it, then the user's (3)
        logits = torch.full((embeddings.shape[0], 2, self.size, self.size), -10.0)
        logits[:, 0] = 0.0
        x0, y0, x1, y1 = (int(round(float(v))) for v in self.box[0])
        logits[:, 1, y0 : y1 + 1, x0 : x1 + 1] = 10.0
        return logits


def _parser(files: list[str], tmp_path: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update({"backbone": "sam_tiny", "device": "$torch.device('cpu')", "output_dir": str(tmp_path / "out"),
                   "input_dir": str(tmp_path), **overrides})  # fmt: skip
    return parser


def _segment(parser: ConfigParser, net, request: dict) -> dict:
    """What MONAI Label's bundle task does with a request: preprocessing, the inferer on a batch of one,
    then the postprocessing (which writes the mask)."""
    data = parser.get_parsed_content("preprocessing")(request)
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], net)[0]
    return parser.get_parsed_content("postprocessing")(data)


def test_a_box_lands_where_the_user_drew_it_on_a_non_square_image(tmp_path):
    # 300 wide, 200 high, asymmetric; MONAI's reader indexes it (i = column, j = row), as Slicer's IJK
    picture = np.zeros((200, 300, 3), np.uint8)
    picture[20:60, 30:250] = 255
    Image.fromarray(picture).save(tmp_path / "case.png")
    parser = _parser(["inference.json", "interactive.json"], tmp_path)
    net = BoxPainter(int(parser.get_parsed_content("input_size")))
    # Slicer's roi: [i0, i1, j0, j1, k0, k1], corners in any order
    _segment(parser, net, {"image": str(tmp_path / "case.png"), "roi": [249, 30, 20, 59, 0, 0]})
    mask = np.asarray(Image.open(tmp_path / "out" / "case.png"))
    expected = np.zeros((200, 300), np.uint8)
    expected[20:60, 30:250] = 1
    assert mask.shape == (200, 300)
    edge = np.abs(mask.astype(int) - expected).sum()
    assert edge <= 2 * (40 + 220)  # at most one pixel off along the box's border (resize 300 -> 256 -> 300)
    assert mask[25:55, 35:245].all() and not mask[65:, :].any() and not mask[:, 255:].any()


def test_clicks_reach_sams_prompt_encoder_in_model_input_pixels(tmp_path):
    Image.fromarray(np.zeros((100, 400), np.uint8)).save(tmp_path / "wide.png")  # 400 wide: scale 256/400
    parser = _parser(["inference.json", "interactive.json"], tmp_path)
    net = BoxPainter(int(parser.get_parsed_content("input_size")))
    data = parser.get_parsed_content("preprocessing")(
        {"image": str(tmp_path / "wide.png"), "foreground": [[399, 0, 0]], "background": [[0, 99, 0]],
         "roi": [0, 399, 0, 99]}  # fmt: skip
    )
    with torch.no_grad():
        parser.get_parsed_content("inferer")(data["image"][None], net)
    scale = 256 / 400
    coords, labels = net.points
    torch.testing.assert_close(coords[0], torch.tensor([[(399.5) * scale - 0.5, 0.5 * scale - 0.5],
                                                        [0.5 * scale - 0.5, 99.5 * scale - 0.5]]))  # fmt: skip
    assert labels[0].tolist() == [1.0, 0.0]  # SAM: 1 foreground, 0 background
    torch.testing.assert_close(net.box[0], torch.tensor([0.0, 0.0, 400 * scale - 1, 100 * scale - 1]))


def test_without_a_prompt_the_interactive_model_is_the_auto_segmentation(tmp_path, tiny_net):
    tiny_net.eval()
    image = torch.rand(1, 3, tiny_net.input_size, tiny_net.input_size)
    with torch.no_grad():
        auto = tiny_net(image)
        alone = PromptedInferer(tiny_net.input_size)(image, tiny_net)
        clicked = PromptedInferer(tiny_net.input_size)(_with_prompt(image, [[10, 20, 0, 1], [30, 5, 0, 0]]), tiny_net)
    torch.testing.assert_close(alone, auto[:, :2])
    assert not torch.allclose(clicked.as_tensor(), alone)  # the clicks change the decoder's answer


def _with_prompt(image: torch.Tensor, rows: list[list[float]]):
    from monai.data import MetaTensor

    meta = {"user_prompt": torch.tensor(rows, dtype=torch.float32), "spatial_shape": tuple(image.shape[2:])}
    return MetaTensor(image, meta=meta)


@pytest.mark.parametrize("flip", [False, True])
def test_a_volume_is_corrected_on_the_prompted_slice_only(tmp_path, flip):
    """The box lands where the user drew it, also when the slices reach the network upside down."""
    volume = np.zeros((60, 40, 5), np.float32)
    volume[10:50, 5:30, :] = 100.0
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "ct.nii.gz")
    parser = _parser(["inference.json", "volumes.json", "interactive.json"], tmp_path, slice_flip_vertical=flip)
    net = BoxPainter(int(parser.get_parsed_content("input_size")))
    _segment(parser, net, {"image": str(tmp_path / "ct.nii.gz"), "roi": [10, 49, 5, 29, 2, 2], "slice": 2})
    out = nib.load(tmp_path / "out" / "ct.nii.gz")
    mask = np.asarray(out.dataobj)
    assert mask.shape == (60, 40, 5) and np.allclose(out.affine, affine)
    assert mask[..., [0, 1, 3, 4]].sum() == 0
    expected = np.zeros((60, 40), np.uint8)
    expected[10:50, 5:30] = 1
    assert np.abs(mask[..., 2].astype(int) - expected).sum() <= 2 * (40 + 25)


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"foreground": [[500, 3]]}, "prompt point [500, 3, 0] lies outside the image of size 300 x 200"),
        ({"foreground": [[5]]}, "foreground point [5] is not [i, j] or [i, j, k]"),
        ({"roi": [1, 2, 3]}, "roi [1, 2, 3] is not [i0, i1, j0, j1] or [i0, i1, j0, j1, k0, k1]"),
    ],
)
def test_a_malformed_prompt_is_refused_naming_the_image(tmp_path, request_, message):
    Image.fromarray(np.zeros((200, 300), np.uint8)).save(tmp_path / "case.png")
    pre = _parser(["inference.json", "interactive.json"], tmp_path).get_parsed_content("preprocessing")
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps it: the one-line report finds it
        pre({"image": str(tmp_path / "case.png"), **request_})
    error = find_input_error(err.value)
    assert isinstance(error, BundleInputError) and "case.png" in str(error) and message in str(error)


def test_the_request_label_picks_the_prompted_class(tmp_path):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "case.png")
    prompt = UserPromptd("image", ["left lung", "right lung"])
    parser = _parser(["inference.json"], tmp_path)
    data = parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "case.png"), "label": "Right Lung"})
    assert prompt(data)["image"].meta["user_prompt_class"] == 2
    assert prompt({**data, "label": "/tmp/some_label_file.png"})["image"].meta["user_prompt_class"] == 1


def test_the_interactive_metadata_is_2d_with_a_binary_output():
    meta = interactive_metadata(
        {"task": "Prompt-free slice-wise 3D segmentation of liver (BLO-SAM few-shot task ct)",
         "network_data_format": {"inputs": {"image": {"spatial_shape": ["*", "*", "*"]}},
                                 "outputs": {"pred": {"num_channels": 2, "spatial_shape": ["*", "*", "*"],
                                                      "channel_def": {"0": "background", "1": "liver"}}}}}  # fmt: skip
    )
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == ["*", "*"]  # MONAI Label: dimension 2 (one slice)
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "liver"}
    assert "interactive correction" in meta["task"]


def test_monai_labels_copy_of_each_models_network_still_shares_the_embedding_cache():
    """MONAI Label deep-copies a model's network before its first request: the copies of the task's auto
    and interactive networks must keep the one process-wide cache (and a pickled cache gets a new lock)."""
    import copy
    import pickle

    from bundle.networks import shared_embedding_cache

    parser = _parser(["inference.json", "interactive.json"], Path("."))
    auto, interactive = (copy.deepcopy(parser.get_parsed_content("network_def", lazy=False)) for _ in range(2))
    assert auto.embedding_cache is interactive.embedding_cache is shared_embedding_cache()
    restored = pickle.loads(pickle.dumps(auto.embedding_cache))
    assert restored is not auto.embedding_cache and restored.max_items == auto.embedding_cache.max_items


@pytest.mark.parametrize("mode, tokens", [("replace", 3), ("add", 4)])
def test_a_box_replaces_or_follows_the_learnt_tokens_and_bounds_the_object(tiny_net, mode, tokens):
    painter = BoxPainter(tiny_net.input_size)
    image = torch.rand(1, 3, tiny_net.input_size, tiny_net.input_size)
    box = [[10, 20, 0, 2], [40, 60, 0, 3]]  # i (column) 10..40, j (row) 20..60
    with torch.no_grad():
        PromptedInferer(tiny_net.input_size, box=mode)(_with_prompt(image, box), painter)
        clipped = PromptedInferer(tiny_net.input_size, box=mode)(_with_prompt(image, box), tiny_net)
    assert painter.tokens == tokens  # the learnt token, dropped or kept, then SAM's two box corners (+ pad point)
    outside = torch.ones(clipped.shape[-2:], dtype=torch.bool)
    outside[20:61, 10:41] = False
    assert (clipped[0, 1][outside] == -1e4).all() and (clipped[0, 1][~outside] > -1e4).all()


def test_an_image_already_seen_is_not_read_again_and_its_mask_is_the_same(tmp_path, monkeypatch):
    picture = np.zeros((200, 300, 3), np.uint8)
    picture[20:60, 30:250] = 255
    Image.fromarray(picture).save(tmp_path / "case.png")
    parser = _parser(["inference.json", "interactive.json"], tmp_path)
    cache = parser.get_parsed_content("preprocessing").transforms[0]
    calls = []
    reader = type(cache.transform.transforms[0])  # the image reader, first of the chain
    monkeypatch.setattr(reader, "__call__", _counting(reader.__call__, calls))
    net = BoxPainter(int(parser.get_parsed_content("input_size")))
    masks = []
    for roi in ([249, 30, 20, 59, 0, 0], [100, 200, 20, 59, 0, 0], [249, 30, 20, 59, 0, 0]):
        _segment(parser, net, {"image": str(tmp_path / "case.png"), "roi": roi})
        masks.append(np.asarray(Image.open(tmp_path / "out" / "case.png")))
    assert len(calls) == 1  # read and resized once
    np.testing.assert_array_equal(masks[2], masks[0])  # the cached copy inverts exactly as the first
    assert masks[1][:, 100:201].any() and not masks[1][:, 205:].any()  # each request's own box
    Image.fromarray(picture[::-1].copy()).save(tmp_path / "case.png")  # an edited file is read again
    _segment(parser, net, {"image": str(tmp_path / "case.png"), "roi": [249, 30, 20, 59, 0, 0]})
    assert len(calls) == 2


def _counting(call, calls):
    def counted(self, *args, **kwargs):
        calls.append(1)
        return call(self, *args, **kwargs)

    return counted


def test_clip_keeps_the_learnt_prompts_answer_inside_the_box_and_clears_the_rest(tiny_net):
    tiny_net.eval()
    image = torch.rand(1, 3, tiny_net.input_size, tiny_net.input_size)
    with torch.no_grad():
        auto = PromptedInferer(tiny_net.input_size)(image, tiny_net)
        prompted = _with_prompt(image, [[10, 20, 0, 2], [40, 60, 0, 3]])
        clipped = PromptedInferer(tiny_net.input_size, box="clip")(prompted, tiny_net)
    torch.testing.assert_close(clipped.as_tensor()[0, :, 20:61, 10:41], auto[0, :, 20:61, 10:41])
    assert (clipped[0, 1, :20] == -1e4).all() and (clipped[0, 1, :, 41:] == -1e4).all()


def test_presets_pick_how_a_box_meets_the_learnt_prompt():
    from bundle.export import task_settings

    configs = ROOT / "configs"
    for preset, mode in (("jsrt", "clip"), ("dental", "clip"), ("kvasir", "replace")):
        settings = task_settings([str(configs / "train.json"), str(configs / "datasets" / f"{preset}.json")])
        assert settings["interactive_box"] == mode, preset
