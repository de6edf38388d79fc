"""The token bank of support tokens: its votes, their fusion with the network's logits, writing and reading it,
and building it from labelled volumes as volume inference slices them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Compose

from bundle.data.volumes import VolumeSlicing, structure_value_map, volume_load_transforms
from bundle.errors import BundleInputError
from bundle.inferers import SliceWiseInferer, fit_longest_side
from bundle.networks import BLOSAM, TokenBank, load_token_bank
from bundle.networks.token_bank import VOTE_FLOOR, body_positions, build_token_bank, fuse_votes, stratified

from .test_volumes import _decathlon


def _two_cluster_bank(neighbours: int = 3) -> TokenBank:
    """Tokens near e0 are background, tokens near e1 are class 1, tokens near e2 half class 1, half class 2."""
    eye = torch.eye(4)
    features = torch.cat([eye[i].expand(5, 4) + 0.01 * torch.randn(5, 4) for i in range(3)])
    fractions = torch.tensor([[1.0, 0, 0]] * 5 + [[0, 1.0, 0]] * 5 + [[0, 0.5, 0.5]] * 5)
    return TokenBank(F.normalize(features, dim=1), fractions, neighbours)


def test_votes_are_the_mean_class_fractions_of_the_nearest_tokens():
    torch.manual_seed(0)
    bank = _two_cluster_bank()
    embeddings = torch.zeros(1, 4, 1, 3)
    embeddings[0, :, 0, 0] = torch.tensor([2.0, 0, 0, 0])  # scale does not matter: cosine similarity
    embeddings[0, :, 0, 1] = torch.tensor([0, 0.3, 0, 0])
    embeddings[0, :, 0, 2] = torch.tensor([0, 0, 1.0, 0.1])
    votes = bank.votes(embeddings, chunk=2)  # chunked as for a whole slice
    assert votes.shape == (1, 3, 1, 3)
    torch.testing.assert_close(votes[0, :, 0].T, torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0.5, 0.5]]))
    with pytest.raises(ValueError, match="5-d"):
        bank.votes(torch.zeros(1, 5, 2, 2))


def test_fused_logits_give_the_product_of_both_distributions():
    logits = torch.randn(2, 3, 4, 4)
    votes = torch.softmax(torch.randn(2, 3, 4, 4), dim=1)
    votes[0, 2, 0, 0] = 0.0  # a class no neighbour holds is floored, not ruled out
    votes = votes / votes.sum(dim=1, keepdim=True)
    fused = torch.softmax(fuse_votes(logits, votes), dim=1)
    product = torch.softmax(logits, dim=1) * votes.clamp_min(VOTE_FLOOR)
    torch.testing.assert_close(fused, product / product.sum(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="2 classes"):
        fuse_votes(logits, votes[:, :2])


def test_weighted_fusion_gives_the_weighted_mean_of_both_distributions():
    logits = torch.randn(2, 3, 4, 4)
    votes = torch.softmax(torch.randn(2, 3, 4, 4), dim=1)
    votes[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])  # the votes can outvote the network, not only veto it
    logits[0, :, 0, 0] = torch.tensor([0.0, 8.0, -8.0])
    fused = torch.softmax(fuse_votes(logits, votes, vote_weight=0.75), dim=1)
    torch.testing.assert_close(fused, 0.75 * votes + 0.25 * torch.softmax(logits, dim=1))
    assert fused[0, :, 0, 0].argmax() == 2
    torch.testing.assert_close(torch.softmax(fuse_votes(logits, votes, 0.0), dim=1), torch.softmax(logits, dim=1))
    with pytest.raises(ValueError, match="within 0..1"):
        fuse_votes(logits, votes, 1.5)


def test_body_positions_are_relative_to_the_largest_region_above_the_floor():
    image = torch.zeros(40, 80)  # rows x columns: a 20 x 40 body at rows 10..29, columns 20..59, and a speck
    image[10:30, 20:60] = 5.0
    image[0, 0] = 9.0
    grid = body_positions(image, (8, 16), (4, 4), 16)  # fitted to 8 x 16 of a 16 x 16 input: 4 x 4 tokens
    assert grid.shape == (4, 4, 2)
    # token centres at input pixels 2, 6 (rows) -> slice rows 10, 30; columns 2, 6, 10, 14 -> 10, 30, 50, 70
    torch.testing.assert_close(grid[:2, 0, 0], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(grid[0, :, 1], torch.tensor([-0.25, 0.25, 0.75, 1.25]))
    flat = body_positions(torch.ones(8, 8), (8, 8), (2, 2), 8)  # no body: the slice is its own box
    torch.testing.assert_close(flat[..., 0], torch.tensor([[0.25, 0.25], [0.75, 0.75]]))


def test_position_aware_votes_keep_look_alike_structures_apart():
    """Two classes whose tokens look the same (left and right kidney): appearance alone mixes them, the
    position weight gives each token the class on its side of the body."""
    torch.manual_seed(0)
    features = F.normalize(torch.ones(20, 4) + 0.001 * torch.randn(20, 4), dim=1)
    fractions = torch.tensor([[0.0, 1.0, 0.0]] * 10 + [[0.0, 0.0, 1.0]] * 10)
    positions = torch.cat([torch.full((10, 2), 0.2), torch.full((10, 2), 0.8)])
    query = torch.ones(1, 4, 1, 2)
    where = torch.tensor([[[[0.25, 0.2], [0.75, 0.8]]]])  # 1 x 1 x 2 x 2
    mixed = TokenBank(features, fractions, 10, positions).votes(query)
    assert mixed[0, 1:].min() > 0.2  # both sides get votes for both classes
    aware = TokenBank(features, fractions, 10, positions, position_weight=1.0)
    torch.testing.assert_close(aware.votes(query, where)[0, :, 0].T, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="positions 1 x 1 x 2 x 2"):
        aware.votes(query)
    with pytest.raises(ValueError, match="needs the support tokens' positions"):
        TokenBank(features, fractions, 10, None, position_weight=1.0)


def test_balanced_votes_weigh_each_token_by_its_strata_inverse_sampling_rate():
    """Background kept 1 in 4, the organ 1 in 1: with gamma 1 a background neighbour counts 4 times, with
    gamma 0.5 twice; gamma 0 gives the plain mean, and the votes stay a class distribution."""
    features = F.normalize(torch.ones(4, 4) + 0.01 * torch.eye(4), dim=1)  # all four are neighbours of the query
    fractions = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2)
    strata, counts = torch.tensor([0, 0, 1, 1]), torch.tensor([8, 2])
    query = torch.ones(1, 4, 1, 1)
    for gamma, background in ((0.0, 0.5), (0.5, 2 * 2 / (2 * 2 + 2)), (1.0, 4 * 2 / (4 * 2 + 2))):
        bank = TokenBank(features, fractions, 4, strata=strata, stratum_counts=counts, balance=gamma)
        votes = bank.votes(query, chunk=1)[0, :, 0, 0]
        torch.testing.assert_close(votes, torch.tensor([background, 1 - background]))
    bank = TokenBank(features, fractions, 4, strata=strata, stratum_counts=counts)
    assert bank.vote_weights is None  # gamma 0
    bank.balance = 1.0  # set after construction: the votes follow it
    torch.testing.assert_close(bank.votes(query)[0, :, 0, 0], torch.tensor([0.8, 0.2]))
    assert bank.strata.dtype == torch.long and bank.stratum_counts.dtype == torch.long  # normalised when built
    with pytest.raises(ValueError, match="a balance needs each token's stratum"):
        TokenBank(features, fractions, 4, balance=1.0)
    with pytest.raises(ValueError, match="strata and stratum counts go together"):
        TokenBank(features, fractions, 4, strata=strata)
    with pytest.raises(ValueError, match="more tokens kept"):
        TokenBank(features, fractions, 4, strata=strata, stratum_counts=torch.tensor([8, 1]))
    with pytest.raises(ValueError, match="balance -1.0 is negative"):
        TokenBank(features, fractions, 4, strata=strata, stratum_counts=counts, balance=-1.0)


def test_stratified_keeps_at_most_the_limit_of_each_class():
    labels = torch.tensor([0] * 50 + [1] * 7 + [2] * 30)
    keep = stratified(labels, {0: 10, 1: 10, 2: 5}, seed=1)
    counts = torch.bincount(labels[keep], minlength=3).tolist()
    assert counts == [10, 7, 5] and len(set(keep.tolist())) == len(keep)
    assert torch.equal(keep, stratified(labels, {0: 10, 1: 10, 2: 5}, seed=1))  # seeded


def test_bank_round_trip_and_a_clear_error_for_a_foreign_file(tmp_path):
    bank = _two_cluster_bank()
    bank.save(tmp_path / "token_bank.pt")
    loaded = TokenBank.load(tmp_path / "token_bank.pt")
    assert loaded.neighbours == 3 and loaded.features.dtype == torch.float32
    torch.testing.assert_close(loaded.features, bank.features, atol=1e-3, rtol=1e-3)  # stored as float16
    assert load_token_bank(tmp_path / "token_bank.pt", "false") is None
    assert load_token_bank(tmp_path / "token_bank.pt", True, neighbours=5).neighbours == 5
    with pytest.raises(BundleInputError, match="no token positions.*--token_prior_position 0"):
        load_token_bank(tmp_path / "token_bank.pt", True, position_weight=1.0)  # a bank written without them
    placed = TokenBank(bank.features, bank.fractions, 3, torch.rand(15, 2))
    placed.save(tmp_path / "placed.pt")
    loaded = load_token_bank(tmp_path / "placed.pt", True, position_weight=0.5)
    assert loaded.uses_positions and loaded.position_weight == 0.5
    torch.testing.assert_close(loaded.positions, placed.positions, atol=1e-3, rtol=1e-3)
    with pytest.raises(BundleInputError, match="no token strata.*--token_prior_balance 0"):
        load_token_bank(tmp_path / "placed.pt", True, balance=0.5)  # a bank written before bundle 0.8
    strata, counts = bank.fractions.argmax(dim=1), torch.tensor([50, 20, 10])
    TokenBank(bank.features, bank.fractions, 3, strata=strata, stratum_counts=counts).save(tmp_path / "strata.pt")
    loaded = load_token_bank(tmp_path / "strata.pt", True, balance=0.5)
    assert torch.equal(loaded.strata, strata) and torch.equal(loaded.stratum_counts, counts)
    assert loaded.balance == 0.5 and loaded.vote_weights is not None
    torch.save({"model": {}}, tmp_path / "model.pt")
    for path in (tmp_path / "model.pt", tmp_path / "missing.pt"):
        with pytest.raises(BundleInputError, match=f"{path}: not a token bank.*--token_prior false"):
            load_token_bank(path, True)


def test_auto_uses_a_bank_when_there_is_one_and_warns_and_goes_plain_when_not(tmp_path, caplog):
    """``--token_prior auto``: the bank beside the checkpoint when it is usable; none (a model trained on 2D
    images, an export without its bank) or one without token positions segments without the prior, and one
    without strata votes at balance 0, each with a warning naming the file; a broken file fails as under
    ``true``, and ``true`` still fails on a missing or older one."""
    bank = _two_cluster_bank()
    strata, counts = bank.fractions.argmax(dim=1), torch.tensor([50, 20, 10])
    TokenBank(bank.features, bank.fractions, 3, strata=strata, stratum_counts=counts).save(tmp_path / "strata.pt")
    bank.save(tmp_path / "old.pt")  # no strata: written before bundle 0.8
    with caplog.at_level("INFO", logger="bundle.networks.token_bank"):
        loaded = load_token_bank(tmp_path / "strata.pt", "auto", balance=0.5)
    assert isinstance(loaded, TokenBank) and loaded.balance == 0.5 and loaded.optional
    (used,) = caplog.records  # which bank the default took, and when it was written
    assert used.levelname == "INFO" and f"voting with {tmp_path / 'strata.pt'} (written 20" in used.getMessage()
    assert "15 support tokens, 2 structures" in used.getMessage()
    assert loaded.source == str(tmp_path / "strata.pt") and not load_token_bank(tmp_path / "strata.pt", True).optional
    TokenBank(bank.features, bank.fractions, 3, torch.rand(15, 2)).save(tmp_path / "placed.pt")  # bundle 0.7
    for path, why in ((tmp_path / "missing.pt", "no token bank at"), (tmp_path / "old.pt", "no token positions")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="bundle.networks.token_bank"):
            assert load_token_bank(path, " Auto ", position_weight=0.5, balance=0.5) is None
        (message,) = [r.getMessage() for r in caplog.records]
        assert str(path) in message and why in message and "without the token prior" in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="bundle.networks.token_bank"):  # a bank of bundle 0.7 votes as 0.7 did
        older = load_token_bank(tmp_path / "placed.pt", "auto", position_weight=0.5, balance=0.5)
    assert older.optional and older.balance == 0.0 and older.position_weight == 0.5
    (message,) = [r.getMessage() for r in caplog.records]
    assert str(tmp_path / "placed.pt") in message and "voting at --token_prior_balance 0" in message
    with pytest.raises(BundleInputError, match="no token strata"):
        load_token_bank(tmp_path / "placed.pt", True, position_weight=0.5, balance=0.5)  # true asks as before
    (tmp_path / "a_folder").mkdir()
    with pytest.raises(BundleInputError, match="a_folder: not a token bank"):  # there, but not a bank
        load_token_bank(tmp_path / "a_folder", "auto")
    torch.save({"model": {}}, tmp_path / "model.pt")
    with pytest.raises(BundleInputError, match="model.pt: not a token bank"):
        load_token_bank(tmp_path / "model.pt", "auto")
    with pytest.raises(BundleInputError, match="missing.pt: not a token bank"):
        load_token_bank(tmp_path / "missing.pt", "true")
    with pytest.raises(BundleInputError, match="--token_prior maybe: use true, false or auto"):
        load_token_bank(tmp_path / "strata.pt", "maybe")


class _Stub(torch.nn.Module):
    """A network with fixed logits and an encoder whose embedding of a slice is its 4x4-pooled pixels."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.classes = classes
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4)

    def forward(self, x: torch.Tensor, encoded: bool = False) -> torch.Tensor:
        size = [4 * s for s in x.shape[-2:]] if encoded else x.shape[-2:]
        return torch.zeros(x.shape[0], self.classes, *size)


def test_slice_wise_inference_adds_the_log_votes_to_the_logits():
    torch.manual_seed(0)
    volume = torch.rand(1, 1, 16, 16, 3) * 255
    bank = TokenBank(F.normalize(torch.randn(40, 3), dim=1), torch.softmax(torch.randn(40, 3), dim=1), 4)
    plain = SliceWiseInferer(16, backbone=None)(volume, _Stub())
    fused = SliceWiseInferer(16, backbone=None, token_bank=bank)(volume, _Stub())
    assert torch.equal(plain, torch.zeros_like(plain))
    probs = torch.softmax(fused, dim=1)
    assert fused.shape == plain.shape and not torch.allclose(probs, torch.full_like(probs, 1 / 3))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 16, 16, 3))
    # each slice's votes, brought back the logits' way, are what the fused logits hold (plain logits are 0)
    x = SliceWiseInferer(16, backbone=None).slice_input(volume[0], 1)[None]
    votes = F.interpolate(bank.votes(_Stub().encode(x)), size=(16, 16), mode="bilinear", align_corners=False)
    votes = votes / votes.sum(dim=1, keepdim=True)
    expected = SliceWiseInferer(16).slicer.from_upright(torch.log(votes.clamp_min(VOTE_FLOOR))[0])
    torch.testing.assert_close(fused[0, :, :, :, 1], expected)


def test_a_bank_of_other_classes_fails_naming_its_file_or_under_auto_is_skipped(tmp_path, caplog):
    """A bank left beside a checkpoint that another training replaced (another class count): ``true`` fails
    naming the file; ``auto`` warns and segments with the network alone."""
    torch.manual_seed(0)
    volume = torch.rand(1, 1, 16, 16, 2) * 255
    strata, counts = torch.zeros(40, dtype=torch.long), torch.tensor([40, 0, 0])
    bank = TokenBank(F.normalize(torch.randn(40, 3), dim=1), torch.tensor([[1.0, 0, 0]] * 40), 4, strata=strata,
                     stratum_counts=counts)  # fmt: skip
    bank.save(tmp_path / "token_bank.pt")
    network = _Stub(classes=2)
    network.num_classes = 1  # one structure: background and foreground logits; the bank votes for two
    plain = SliceWiseInferer(16, backbone=None)(volume, network)
    with pytest.raises(BundleInputError, match=f"{tmp_path / 'token_bank.pt'}: its votes are for 2 structures"):
        SliceWiseInferer(16, backbone=None, token_bank=load_token_bank(tmp_path / "token_bank.pt", True))(
            volume, network
        )
    inferer = SliceWiseInferer(16, backbone=None, token_bank=load_token_bank(tmp_path / "token_bank.pt", "auto"))
    with caplog.at_level("WARNING", logger="bundle.inferers"):
        skipped = inferer(volume, network)
    assert torch.equal(skipped, plain) and inferer.token_bank is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert str(tmp_path / "token_bank.pt") in message and "without the token prior" in message
    network.num_classes = 2  # a bank of the network's classes is used
    assert SliceWiseInferer(16, backbone=None, token_bank=bank).usable_bank(network) is bank


def test_slice_wise_inference_with_position_aware_votes_and_a_weighted_mean():
    torch.manual_seed(0)
    volume = torch.zeros(1, 1, 16, 16, 2)
    volume[0, 0, 2:14, 4:12] = torch.rand(12, 8, 2) * 200 + 50  # a body inside air
    bank = TokenBank(F.normalize(torch.rand(40, 3), dim=1), torch.softmax(torch.randn(40, 3), dim=1), 4,
                     torch.rand(40, 2), position_weight=2.0)  # fmt: skip
    inferer = SliceWiseInferer(16, backbone=None, token_bank=bank, token_vote_weight=0.75)
    fused = inferer(volume, _Stub())
    x = inferer.slice_input(volume[0], 1)[None]
    where = inferer.token_positions(x[0], (16, 16), (4, 4))[None]
    assert where.min() < 0 and where.max() > 1  # tokens outside the body lie outside its box
    votes = F.interpolate(bank.votes(_Stub().encode(x), where), size=(16, 16), mode="bilinear", align_corners=False)
    votes = votes / votes.sum(dim=1, keepdim=True)
    expected = inferer.slicer.from_upright(torch.log(0.75 * votes + 0.25 / 3)[0])  # the network's logits are 0
    torch.testing.assert_close(fused[0, :, :, :, 1], expected)
    torch.testing.assert_close(torch.softmax(fused, dim=1).sum(dim=1), torch.ones(1, 16, 16, 2))


def test_the_token_prior_encodes_each_slice_once_without_a_cache():
    """The decoder and the votes share one encoder pass: a run without an embedding cache costs no more."""
    network = BLOSAM(backbone="sam_tiny", num_classes=2, pretrained=False).eval()
    passes = []
    network.image_encoder.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0]))
    volume = torch.rand(1, 1, 24, 20, 5) * 255
    dim = network.encode(torch.zeros(1, 3, network.input_size, network.input_size)).shape[1]
    passes.clear()
    bank = TokenBank(F.normalize(torch.randn(30, dim), dim=1), torch.softmax(torch.randn(30, 3), dim=1), 5)
    inferer = SliceWiseInferer(network.input_size, slices_per_batch=2, backbone=network.backbone_name)
    with torch.no_grad():
        plain = inferer(volume, network)
        assert passes == [2, 2, 1]
        passes.clear()
        inferer.token_bank = bank
        fused = inferer(volume, network)
    assert passes == [2, 2, 1]  # one pass per batch of slices, as without the prior
    assert fused.shape == plain.shape and not torch.allclose(fused, plain)


def test_a_bank_built_from_a_support_volume_recalls_its_own_labels(tmp_path):
    """Built as volume training builds it (every token kept), each token of the support's own slices finds
    itself: the votes are the label's class fractions under each token."""
    data = _decathlon(tmp_path / "data", n=1)
    volume = {"image": str(data / "imagesTr" / "case_0.nii.gz"), "label": str(data / "labelsTr" / "case_0.nii.gz")}
    network = BLOSAM(backbone="sam_tiny", num_classes=2, pretrained=False)
    network.eval()
    value_map = structure_value_map({"liver": 6, "spleen": 2})
    load = Compose(volume_load_transforms("ct", "abdomen", with_label=True))
    inferer = SliceWiseInferer(network.input_size, backbone=network.backbone_name)
    bank = build_token_bank(network, [volume], load, value_map, inferer, 10**6, 10**6, neighbours=1)
    image = load(volume)["image"].as_tensor()
    slices = inferer.slicer.count(image)
    inputs = [fit_longest_side(inferer.slice_input(image, i)[None], network.input_size)[0] for i in range(slices)]
    tokens = network.encode(inputs[0]).shape[-2:].numel()
    assert bank.features.shape[0] == slices * tokens and bank.num_classes == 3
    assert set(torch.unique(bank.fractions.argmax(dim=1)).tolist()) == {0, 1, 2}  # both organs are in the bank
    torch.testing.assert_close(bank.features.norm(dim=1), torch.ones(len(bank.features)))
    assert bank.positions.shape == (len(bank.features), 2)  # each token's place in its slice's body box
    organ = bank.fractions[:, 1:].sum(dim=1) > 0.5
    assert 0 <= bank.positions[organ].min() and bank.positions[organ].max() <= 1  # organs lie inside the body
    for i in (0, slices // 2):  # every token kept, in slice order: a slice's own tokens vote for it
        votes = bank.votes(network.encode(inputs[i]))[0].reshape(3, -1).T
        torch.testing.assert_close(votes, bank.fractions[i * tokens : (i + 1) * tokens])
    # the slicing object writes the same bank to a file, beside the size prior
    slicing = VolumeSlicing({"liver": 6, "spleen": 2}, cache_dir=str(tmp_path / "slices"))
    slicing.write_token_bank([volume], network, tmp_path / "models" / "token_bank.pt")
    assert TokenBank.load(tmp_path / "models" / "token_bank.pt").features.shape[1] == bank.features.shape[1]


def test_the_bank_holds_the_same_tokens_as_a_draw_from_every_support_token(tmp_path):
    """The bank draws its tokens from the labels first and encodes after: the result is the bank that keeping
    every support token and drawing from them gives (the earlier way, which held all of them in memory)."""
    data = _decathlon(tmp_path / "data", n=2)
    volumes = [
        {"image": str(data / "imagesTr" / f"case_{i}.nii.gz"), "label": str(data / "labelsTr" / f"case_{i}.nii.gz")}
        for i in range(2)
    ]
    network = BLOSAM(backbone="sam_tiny", num_classes=2, pretrained=False).eval()
    value_map = structure_value_map({"liver": 6, "spleen": 2})
    load = Compose(volume_load_transforms("ct", "abdomen", with_label=True))
    inferer = SliceWiseInferer(network.input_size, backbone=network.backbone_name)
    features, fractions, positions = [], [], []
    for volume in volumes:  # every token of every slice, as inference shows it
        loaded = load(volume)
        image, raw = loaded["image"].as_tensor(), loaded["label"].as_tensor()[:1].round().long()
        label = torch.zeros_like(raw)
        for value, index in value_map.items():
            label[raw == value] = index
        for i in range(inferer.slicer.count(image)):
            shown = inferer.slice_input(image, i)
            x, fitted = fit_longest_side(shown[None], network.input_size)
            embedding = network.encode(x)[0]
            features.append(F.normalize(embedding.reshape(embedding.shape[0], -1).T, dim=1))
            positions.append(inferer.token_positions(shown, fitted, embedding.shape[-2:]).reshape(-1, 2))
            onehot, _ = fit_longest_side(F.one_hot(inferer.slicer.plane(label, i)[0], 3).permute(2, 0, 1)[None].float(),
                                         network.input_size)  # fmt: skip
            fractions.append(F.adaptive_avg_pool2d(onehot, embedding.shape[-2:])[0].reshape(3, -1).T)
    labels = torch.cat(fractions).argmax(dim=1)
    counts = torch.bincount(labels, minlength=3)
    assert counts.min() > 3  # both organs and the background have tokens to draw from
    caps = (int(counts[0]) // 3, int(counts[1:].min()) // 2)  # fewer than there are: the draw matters
    keep = stratified(labels, {0: caps[0], 1: caps[1], 2: caps[1]}, seed=5)
    bank = build_token_bank(network, volumes, load, value_map, inferer, *caps, neighbours=1, seed=5)
    assert len(bank.features) == len(keep) < len(labels)
    torch.testing.assert_close(bank.features, torch.cat(features)[keep])
    torch.testing.assert_close(bank.fractions, torch.cat(fractions)[keep])
    torch.testing.assert_close(bank.positions, torch.cat(positions)[keep])
    # each kept token's stratum and every stratum's count before the draw, for the balanced votes
    assert torch.equal(bank.strata, labels[keep]) and torch.equal(bank.stratum_counts, counts)
    bank.save(tmp_path / "bank.pt")
    balanced = TokenBank.load(tmp_path / "bank.pt", balance=1.0)
    kept = torch.bincount(labels[keep], minlength=3)
    torch.testing.assert_close(balanced.vote_weights, (counts / kept).float()[labels[keep]])
    with pytest.raises(ValueError, match="no support volumes"):
        build_token_bank(network, [], load, value_map, inferer)
