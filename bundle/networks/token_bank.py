"""A token bank: the support set's image-token embeddings with their class fractions, and the
nearest-neighbour vote it gives every token of a new slice.

With one labelled CT volume the trained decoder learns the liver but often misses the kidneys, although the
frozen encoder's token embeddings tell the organs apart: labelling each 16 x 16-pixel token of a test slice by
its nearest support tokens (cosine similarity) finds kidneys the decoder misses. Multiplying the decoder's
class probabilities by these votes (adding their logarithm to its logits) was chosen on development volumes
(docs/results/volumes_notes.md). It is written here rather than taken from a library because it works on the
bundle's own cached SAM embeddings; the idea is the non-parametric label transfer of few-shot segmentation
(e.g. PANet's prototypes, here the tokens themselves).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose
from scipy import ndimage
from torch import Tensor

from bundle.atomic import save_atomically
from bundle.errors import BundleInputError

if TYPE_CHECKING:
    from bundle.inferers import SliceWiseInferer

logger = logging.getLogger(__name__)

# the fraction floor of a class's vote before its logarithm is added to the logits: a class no neighbour
# holds is pushed down by log(1e-3), not ruled out
VOTE_FLOOR = 1e-3
FORMAT = 3  # 2: token positions in the body box stored beside the embeddings; 3: each token's stratum and the
# support's token count per stratum, before the draw (for ``balance``)
AUTO = "auto"  # --token_prior auto: the prior when the checkpoint has a usable bank beside it, else the plain pass


class OutdatedTokenBankError(BundleInputError):
    """A token bank written by an older bundle, lacking what the requested settings need."""


class NoTokenStrataError(OutdatedTokenBankError):
    """A token bank written before bundle 0.8: no strata, so it can only vote at balance 0."""


@dataclass
class TokenBank:
    """Support tokens and their class fractions.

    Args:
        features: M x D token embeddings, L2-normalised.
        fractions: M x K fraction of each class (background first) under each token.
        neighbours: tokens that vote for each new token.
        positions: M x 2 token centres (row, column) in their slice's body box, 0..1 (:func:`body_positions`).
        position_weight: lambda of the neighbours' score, cosine similarity - lambda x squared distance of the
            positions: 0 chooses by appearance alone; above 0 a token's neighbours come from the same part of
            the body, which keeps look-alike structures apart (left and right kidney).
        strata: M stratum of each token: the class the draw counted it under (its majority class).
        stratum_counts: K support tokens of each stratum before the draw.
        balance: gamma: each voting token weighs (stratum count / stratum kept) ^ gamma. The draw keeps at most
            a fixed number of tokens per stratum, so with more support volumes the background keeps a smaller
            share of its tokens than the organs; gamma 1 restores the support's own class balance among the
            voters, 0 (the default) counts every kept token alike.
        source: the file the bank was read from (for messages).
        optional: read under ``--token_prior auto``: a bank that does not fit the network is skipped with a
            warning (:meth:`bundle.inferers.SliceWiseInferer.usable_bank`) instead of failing.
    """

    features: Tensor
    fractions: Tensor
    neighbours: int = 10
    positions: Tensor | None = None
    position_weight: float = 0.0
    strata: Tensor | None = None
    stratum_counts: Tensor | None = None
    balance: float = 0.0
    source: str = ""
    optional: bool = False

    def __post_init__(self) -> None:
        # plain tensors (not MONAI's MetaTensor), so the saved bank loads with weights_only=True
        self.features, self.fractions = self.features.as_subclass(Tensor), self.fractions.as_subclass(Tensor)
        if self.features.ndim != 2 or self.fractions.ndim != 2 or len(self.features) != len(self.fractions):
            raise ValueError(
                f"token bank: features M x D and fractions M x K expected, got {tuple(self.features.shape)} "
                f"and {tuple(self.fractions.shape)}"
            )
        if len(self.features) < self.neighbours:
            raise ValueError(f"token bank: {len(self.features)} tokens, fewer than {self.neighbours} neighbours")
        if self.positions is not None:
            self.positions = self.positions.as_subclass(Tensor)
            if tuple(self.positions.shape) != (len(self.features), 2):
                raise ValueError(f"token bank: positions M x 2 expected, got {tuple(self.positions.shape)}")
        if self.position_weight < 0:
            raise ValueError(f"token bank: position weight {self.position_weight} is negative")
        if self.position_weight > 0 and self.positions is None:
            raise ValueError("token bank: a position weight needs the support tokens' positions")
        if (self.strata is None) != (self.stratum_counts is None):
            raise ValueError("token bank: strata and stratum counts go together")
        if self.strata is not None:
            self.strata = self.strata.as_subclass(Tensor).long()
            self.stratum_counts = self.stratum_counts.as_subclass(Tensor).long()
            shapes = (tuple(self.strata.shape), tuple(self.stratum_counts.shape))
            if shapes != ((len(self.features),), (self.num_classes,)):
                raise ValueError(
                    f"token bank: {len(self.features)} strata and {self.num_classes} stratum counts expected, got "
                    f"{shapes[0]} and {shapes[1]}"
                )
            kept = torch.bincount(self.strata, minlength=self.num_classes)
            if (kept > self.stratum_counts).any():
                raise ValueError(
                    f"token bank: more tokens kept {kept.tolist()} than counted {self.stratum_counts.tolist()}"
                )
        _ = self.vote_weights  # the balance checked against the strata now, not at the first vote

    @property
    def vote_weights(self) -> Tensor | None:
        """M weights of the tokens' votes at the current ``balance`` (``None`` at 0: every vote counts alike);
        computed when asked (M values), so a balance set after construction is the one the votes use."""
        if self.balance < 0:
            raise ValueError(f"token bank: balance {self.balance} is negative")
        if self.balance == 0:
            return None
        if self.strata is None:
            raise ValueError("token bank: a balance needs each token's stratum and the stratum counts")
        kept = torch.bincount(self.strata, minlength=self.num_classes)
        rate = self.stratum_counts.double() / kept.clamp_min(1).double()
        return rate[self.strata].pow(self.balance).float()

    @property
    def num_classes(self) -> int:
        """K: the classes voted for, background included."""
        return int(self.fractions.shape[1])

    @property
    def uses_positions(self) -> bool:
        """Whether the votes need each new token's position (``position_weight`` above 0)."""
        return self.position_weight > 0

    @torch.no_grad()
    def votes(self, embeddings: Tensor, positions: Tensor | None = None, chunk: int = 4096) -> Tensor:
        """B x K x h x w: the mean class fractions of each token's nearest bank tokens, for B x D x h x w
        embeddings (and, when :attr:`uses_positions`, the tokens' B x h x w x 2 body-box ``positions``)."""
        batch, dim, h, w = embeddings.shape
        if dim != self.features.shape[1]:
            raise ValueError(f"token bank holds {self.features.shape[1]}-d tokens, the encoder gives {dim}-d")
        device = embeddings.device
        bank = self.features.to(device, torch.float32)
        fractions = self.fractions.to(device, torch.float32)
        tokens = F.normalize(embeddings.float().permute(0, 2, 3, 1).reshape(-1, dim), dim=1)
        if self.uses_positions:
            if positions is None or tuple(positions.shape) != (batch, h, w, 2):
                raise ValueError(f"token bank: positions {batch} x {h} x {w} x 2 expected for position-aware votes")
            # cos - lambda |p - q|^2 = cos + 2 lambda p.q - lambda |q|^2 - lambda |p|^2; the last term is the same
            # for every bank token of a query, so one matmul of extended vectors ranks them as the full score does
            where, bank_where = positions.reshape(-1, 2).to(device, torch.float32), self.positions.to(device).float()
            tokens = torch.cat([tokens, 2 * self.position_weight * where, torch.ones(len(tokens), 1, device=device)], 1)
            bias = -self.position_weight * bank_where.square().sum(dim=1, keepdim=True)
            bank = torch.cat([bank, bank_where, bias], dim=1)
        weights = self.vote_weights  # M weights at the current balance, or None
        weights = None if weights is None else weights.to(device)
        out = torch.empty(len(tokens), self.num_classes, device=device)
        for start in range(0, len(tokens), chunk):  # N x M scores, a chunk at a time
            nearest = (tokens[start : start + chunk] @ bank.T).topk(self.neighbours, dim=1).indices
            if weights is None:
                out[start : start + chunk] = fractions[nearest].mean(dim=1)
            else:  # the weighted mean of the neighbours' class fractions
                weight = weights[nearest]
                voted = (fractions[nearest] * weight[..., None]).sum(dim=1)
                out[start : start + chunk] = voted / weight.sum(dim=1, keepdim=True)
        return out.reshape(batch, h, w, -1).permute(0, 3, 1, 2)

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank (float16 features), atomically."""
        state = {"format": FORMAT, "neighbours": self.neighbours}
        if self.positions is not None:
            state["positions"] = self.positions.half()
        if self.strata is not None:
            state.update(strata=self.strata.to(torch.uint8 if self.num_classes <= 256 else torch.long))
            state.update(stratum_counts=self.stratum_counts)
        save_atomically(dict(state, features=self.features.half(), fractions=self.fractions.half()), path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, neighbours: int | None = None, position_weight: float = 0.0, balance: float = 0.0
    ) -> TokenBank:
        """The bank written by :meth:`save`; ``neighbours`` overrides the stored count; ``position_weight``
        (:class:`TokenBank`) needs a bank that stored positions (format 2), ``balance`` one that stored the
        strata (format 3)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            features, fractions = state["features"].float(), state["fractions"].float()
        except Exception as err:  # a missing or foreign file: say which and how to go on
            raise BundleInputError(
                f"{path}: not a token bank written by volume training ({err}); train on volumes first, pass "
                "--token_prior_file <file>, or leave --token_prior false"
            ) from err
        positions = state.get("positions")
        if float(position_weight) > 0 and positions is None:
            raise OutdatedTokenBankError(
                f"{path}: this token bank holds no token positions (written before bundle 0.7); retrain on the "
                "volumes to rewrite it, or pass --token_prior_position 0 to vote by appearance alone"
            )
        if float(balance) > 0 and "strata" not in state:
            raise NoTokenStrataError(
                f"{path}: this token bank holds no token strata (written before bundle 0.8); retrain on the "
                "volumes to rewrite it, or pass --token_prior_balance 0"
            )
        positions = None if positions is None else positions.float()
        neighbours = int(neighbours or state.get("neighbours", 10))
        strata, counts = state.get("strata"), state.get("stratum_counts")
        return cls(
            features,
            fractions,
            neighbours,
            positions,
            float(position_weight),
            strata,
            counts,
            float(balance),
            str(path),
        )


def load_token_bank(
    path: str | os.PathLike,
    enabled: bool | str,
    neighbours: int | None = None,
    position_weight: float = 0.0,
    balance: float = 0.0,
) -> TokenBank | None:
    """The bank at ``path`` when ``enabled`` (``--token_prior true``), else ``None``.

    ``enabled`` ``"auto"``: the bank when ``path`` holds one. A missing file (a model trained on 2D images, an
    export without its bank) gives ``None`` and a warning naming the file, so the volume is segmented by the
    network alone. A bank written before bundle 0.8 (no strata) votes at balance 0, as that bundle did, with a
    warning (on BTCV at k = 1 and 4 balance 0 scored 83.4 and 83.7 against 54.8 and 75.9 without the prior); one
    written before 0.7 (no positions) is skipped with a warning. A file that is there but is no token bank fails
    as under ``true``: a broken file is not mistaken for an absent one.
    """
    from bundle.data.volumes import switch

    if str(enabled).strip().lower() == AUTO:
        if not os.path.exists(path):
            logger.warning(f"--token_prior auto: no token bank at {path} (it is written by training on volumes); "
                           "segmenting without the token prior")  # fmt: skip
            return None
        try:
            bank = TokenBank.load(path, neighbours, position_weight, balance)
        except NoTokenStrataError:  # its positions passed the check already: at balance 0 it loads
            bank = TokenBank.load(path, neighbours, position_weight, 0.0)
            logger.warning(
                f"--token_prior auto: {path} holds no token strata (written before bundle 0.8); voting at "
                "--token_prior_balance 0, as that bundle did (retrain on the volumes for the default balance)"
            )
        except OutdatedTokenBankError as err:
            logger.warning(f"--token_prior auto: {err}; segmenting without the token prior")
            return None
        bank.optional = True
        # which bank the default picked up, and when it was written: a bank left beside a checkpoint that a later
        # training of the same class count replaced cannot be told from the right one, but the user can see it
        written = datetime.fromtimestamp(os.path.getmtime(path)).strftime("%Y-%m-%d %H:%M")
        logger.info(f"--token_prior auto: voting with {path} (written {written}; {len(bank.features)} support tokens, "
                    f"{bank.num_classes - 1} structures)")  # fmt: skip
        return bank
    try:
        enabled = switch(enabled, "--token_prior")
    except BundleInputError as err:
        raise BundleInputError(f"--token_prior {enabled}: use true, false or auto") from err
    if not enabled:
        return None
    return TokenBank.load(path, neighbours, position_weight, balance)


def fuse_votes(logits: Tensor, votes: Tensor, vote_weight: float | None = None) -> Tensor:
    """Class logits fused with the votes' class distribution.

    ``vote_weight`` ``None``: ``logits`` + log(votes), whose softmax is the product of both distributions,
    renormalised. A weight w in [0, 1]: log(w x votes + (1 - w) x softmax(logits)), whose softmax is their
    weighted mean (votes can then outvote a network that misses a structure, not only veto it).
    """
    if logits.shape[1] != votes.shape[1]:
        raise ValueError(f"token bank votes for {votes.shape[1]} classes, the network predicts {logits.shape[1]}")
    if vote_weight is None:
        return logits + torch.log(votes.to(logits.dtype).clamp_min(VOTE_FLOOR))
    if not 0 <= float(vote_weight) <= 1:
        raise ValueError(f"token prior: the votes' weight {vote_weight} is not within 0..1")
    mixed = vote_weight * votes.to(logits.dtype) + (1 - vote_weight) * torch.softmax(logits, dim=1)
    return torch.log(mixed.clamp_min(torch.finfo(logits.dtype).tiny))


def body_positions(image: Tensor, fitted: tuple[int, int], grid: tuple[int, int], input_size: int) -> Tensor:
    """grid rows x grid columns x 2: each token's centre (row, column) in the slice's body box, 0..1 on each axis.

    ``image`` is the slice (rows x columns) before it was fitted to the network's ``input_size`` square (its
    top-left ``fitted`` rows x columns); the tokens tile that square. The body is the largest connected region
    above the slice's lowest value (air, and whatever the CT window or MR scaling floors with it), so a position
    is relative to the patient rather than to the field of view. A slice without such a region is its own box.
    """
    rows, cols = image.shape
    above = (image > image.min()).cpu().numpy()
    regions, count = ndimage.label(above)
    if count:
        sizes = ndimage.sum_labels(above, regions, range(1, count + 1))
        r, c = np.nonzero(regions == 1 + int(np.argmax(sizes)))
        top, bottom, left, right = r.min(), r.max() + 1, c.min(), c.max() + 1
    else:
        top, bottom, left, right = 0, rows, 0, cols
    centre_r = (torch.arange(grid[0], dtype=torch.float32) + 0.5) * input_size / grid[0] * rows / fitted[0]
    centre_c = (torch.arange(grid[1], dtype=torch.float32) + 0.5) * input_size / grid[1] * cols / fitted[1]
    return torch.stack(
        torch.meshgrid((centre_r - top) / (bottom - top), (centre_c - left) / (right - left), indexing="ij"), dim=-1
    )


def stratified(labels: Tensor, per_class: Mapping[int, int], seed: int = 0) -> Tensor:
    """Indices, in order, of at most ``per_class[c]`` entries of each class ``c`` of ``labels`` (seeded draw)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c, limit in per_class.items():
        index = torch.nonzero(labels == c)[:, 0]
        if len(index) > limit:
            index = index[torch.from_numpy(rng.choice(len(index), size=limit, replace=False))]
        keep.append(index)
    return torch.cat(keep).sort().values


@torch.no_grad()
def build_token_bank(
    network: torch.nn.Module,
    volumes: Sequence[dict],
    load: Compose,
    value_map: Mapping[int, int],
    inferer: SliceWiseInferer,
    background_tokens: int = 8000,
    class_tokens: int = 4000,
    neighbours: int = 10,
    seed: int = 0,
) -> TokenBank:
    """The bank of ``volumes``' tokens: each slice as the volume inference shows it to the network.

    Args:
        network: the BLO-SAM network (its frozen encoder embeds the slices; cached embeddings are reused).
        volumes: ``{"image", "label"}`` items; ``load`` reads them (oriented, intensities scaled).
        value_map: label value -> class index 1..C.
        inferer: a :class:`bundle.inferers.SliceWiseInferer` with the inference's slicing settings.
        background_tokens, class_tokens: at most this many tokens of background and of each class, drawn
            (with ``seed``) among tokens by their majority class: a bank of a few thousand tokens per class
            keeps the vote cheap (docs/results/volumes_notes.md).
        neighbours: tokens that vote for each new token.
    """
    from bundle.inferers import fit_longest_side

    if not volumes:
        raise ValueError("token bank: no support volumes")
    # Two passes, so that only the kept tokens' features are ever held: the class fractions and positions need
    # the labels alone, so the draw is made first and the encoder's features are gathered after it (all support
    # tokens would be 2.6 M x 256 floats at k = 4, about 5 GiB with the list they are joined from). Each volume
    # is read again in the second pass rather than held: a few seconds per volume against k x 100-300 MB held.
    device = next(network.parameters()).device
    classes, grid = len(value_map) + 1, None
    fractions, positions, counts = [], [], []
    for volume in volumes:
        image, label = _support_volume(volume, load, value_map)
        counts.append(inferer.slicer.count(image))
        for i in range(counts[-1]):
            shown = inferer.slice_input(image, i)
            x, fitted = fit_longest_side(shown[None], inferer.input_size)
            if grid is None:  # the encoder's token grid: the same for every slice, each fitted to the input square
                grid = tuple(network.encode(x.to(device)).shape[-2:])
            positions.append(inferer.token_positions(shown, fitted, grid).reshape(-1, 2))
            plane = inferer.slicer.plane(label, i)[0]
            onehot, _ = fit_longest_side(F.one_hot(plane, classes).permute(2, 0, 1)[None].float(), inferer.input_size)
            share = F.adaptive_avg_pool2d(onehot, grid)[0]  # K x h x w: class fractions per token
            fractions.append(share.reshape(classes, -1).T)
    fractions_all = torch.cat(fractions)
    limits = {0: background_tokens, **{c: class_tokens for c in range(1, classes)}}
    strata = fractions_all.argmax(dim=1)
    keep = stratified(strata, limits, seed)
    logger.info(f"token bank: {len(keep)} of {len(fractions_all)} support tokens")
    tokens_per_slice = grid[0] * grid[1]
    slice_of = keep // tokens_per_slice
    features, first = [], 0
    for volume, count in zip(volumes, counts, strict=True):
        wanted = torch.unique(slice_of[(slice_of >= first) & (slice_of < first + count)])
        image = _support_volume(volume, load, value_map)[0] if len(wanted) else None
        for s in wanted.tolist():  # in order, so the features line up with the sorted ``keep``
            x, _ = fit_longest_side(inferer.slice_input(image, s - first)[None], inferer.input_size)
            embedding = network.encode(x.to(device))[0].float().cpu()  # D x h x w
            tokens = F.normalize(embedding.reshape(embedding.shape[0], -1).T, dim=1)
            features.append(tokens[keep[slice_of == s] - s * tokens_per_slice])
        first += count
    counts = torch.bincount(strata, minlength=classes)
    return TokenBank(
        torch.cat(features), fractions_all[keep], neighbours, torch.cat(positions)[keep], 0.0, strata[keep], counts
    )


def _support_volume(volume: dict, load: Compose, value_map: Mapping[int, int]) -> tuple[Tensor, Tensor]:
    """A support volume's image and its label as class indices 0..C (``value_map``: label value -> index)."""
    loaded = load({"image": volume["image"], "label": volume["label"]})
    image, raw = loaded["image"].as_tensor(), loaded["label"].as_tensor()[:1].round().long()
    label = torch.zeros_like(raw)
    for value, index in value_map.items():
        label[raw == int(value)] = int(index)
    return image, label
