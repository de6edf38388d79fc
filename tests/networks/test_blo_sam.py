"""BLO-SAM network: parameter groups, gradients, batching, SAM-format export, cache."""

from __future__ import annotations

import torch

from bundle.networks import BLOSAM, EmbeddingCache
from bundle.networks.lora import LoRALinear


def _loss(net: BLOSAM, images: torch.Tensor) -> torch.Tensor:
    logits = net(images)
    target = torch.zeros(images.shape[0], *logits.shape[-2:], dtype=torch.long)
    target[:, 64:192, 64:192] = 1
    return torch.nn.functional.cross_entropy(logits, target)


def test_only_lower_and_upper_parameters_are_trainable(tiny_net):
    trainable = {id(p) for p in tiny_net.parameters() if p.requires_grad}
    groups = {id(p) for p in tiny_net.lower_parameters() + tiny_net.upper_parameters()}
    assert trainable == groups
    lower = {id(p) for p in tiny_net.lower_parameters()}
    assert lower.isdisjoint({id(p) for p in tiny_net.upper_parameters()})
    assert not any(p.requires_grad for p in tiny_net.image_encoder.parameters())
    assert not any(p.requires_grad for p in tiny_net.prompt_encoder.parameters())


def test_lora_covers_q_and_v_of_every_decoder_attention_including_the_final_one(tiny_net):
    transformer = tiny_net.mask_decoder.transformer
    attentions = [n for n, m in transformer.named_modules() if hasattr(m, "q_proj")]
    assert "final_attn_token_to_image" in attentions and len(attentions) == 7
    for name in attentions:
        attn = transformer.get_submodule(name)
        assert isinstance(attn.q_proj, LoRALinear) and isinstance(attn.v_proj, LoRALinear)
        assert not isinstance(attn.k_proj, LoRALinear)


def test_every_trainable_parameter_receives_a_gradient(tiny_net):
    images = torch.randn(2, 3, 256, 256)
    opt = torch.optim.SGD(tiny_net.lower_parameters() + tiny_net.upper_parameters(), lr=0.1)
    _loss(tiny_net, images).backward()  # LoRA B starts at 0, so A's first gradient is 0: step once
    opt.step()
    opt.zero_grad()
    _loss(tiny_net, images).backward()
    named = {id(p): n for n, p in tiny_net.named_parameters()}
    for p in tiny_net.lower_parameters() + tiny_net.upper_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, named[id(p)]
    # heads of unused mask tokens are neither trained nor counted
    unused = tiny_net.mask_decoder.output_hypernetworks_mlps[1:]
    assert all(not p.requires_grad and p.grad is None for p in unused.parameters())


def test_parameter_counts_are_consistent_and_reported(tiny_net, capsys):
    counts = tiny_net.parameter_counts()
    print("sam_tiny parameter counts:", counts)
    assert counts["total"] == sum(p.numel() for p in tiny_net.parameters())
    assert counts["trainable"] == sum(p.numel() for p in tiny_net.parameters() if p.requires_grad)
    assert counts["upper"] == 256
    # 14 LoRA pairs of rank 4 on 256-d projections (q and v in 7 attentions; cross attentions
    # project to 128) + upscaling + one hypernetwork head
    decoder = tiny_net.mask_decoder
    lora = sum(
        p.numel() for m in decoder.modules() if isinstance(m, LoRALinear) for p in (m.lora_a.weight, m.lora_b.weight)
    )
    head = sum(p.numel() for p in decoder.output_hypernetworks_mlps[0].parameters())
    upscale = sum(p.numel() for p in decoder.output_upscaling.parameters())
    assert counts["lower"] == lora + head + upscale


def test_batch_of_images_gives_the_same_logits_as_one_by_one(tiny_net):
    tiny_net.eval()
    images = torch.randn(3, 3, 256, 256)
    with torch.no_grad():
        batched = tiny_net(images)
        single = torch.cat([tiny_net(images[i : i + 1]) for i in range(3)])
    assert batched.shape == (3, 2, 256, 256)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)


def test_background_is_a_constant_zero_logit(tiny_net):
    with torch.no_grad():
        logits = tiny_net(torch.randn(1, 3, 256, 256))
    assert torch.count_nonzero(logits[:, 0]) == 0


def test_encoder_stays_in_eval_mode(tiny_net):
    tiny_net.train()
    assert tiny_net.training and not tiny_net.image_encoder.training
    assert tiny_net.mask_decoder.training


def test_sam_format_export_round_trips(tiny_net, tmp_path):
    # train a little so LoRA, heads and prompt differ from the pretrained ones
    opt = torch.optim.AdamW(tiny_net.lower_parameters() + tiny_net.upper_parameters(), lr=1e-2)
    images = torch.randn(2, 3, 256, 256)
    for _ in range(3):
        opt.zero_grad()
        _loss(tiny_net, images).backward()
        opt.step()
    path = tmp_path / "sam_tiny_merged.pth"
    torch.save(tiny_net.sam_state_dict(), path)
    reloaded = BLOSAM("sam_tiny", checkpoint=str(path))
    tiny_net.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), tiny_net(images), rtol=1e-4, atol=1e-4)
    # the file holds SAM's own key names, nothing of ours
    keys = torch.load(path, weights_only=True).keys()
    assert not any("lora" in k or ".base." in k or k == "prompt_embedding" for k in keys)
    assert "prompt_encoder.no_mask_embed.weight" in keys


def test_more_classes_than_sam_mask_tokens():
    net = BLOSAM("sam_tiny", num_classes=5)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 256, 256)).shape == (1, 6, 256, 256)
    assert len(net.mask_decoder.used_heads()) == 5


def test_embedding_cache_runs_the_encoder_once_per_image(tiny_net, tmp_path):
    calls = []
    tiny_net.image_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    tiny_net.embedding_cache = EmbeddingCache(tmp_path / "cache")
    images = torch.randn(2, 3, 256, 256)
    first = tiny_net.encode(images)
    again = tiny_net.encode(images[[1, 0]])
    assert calls == [2]
    torch.testing.assert_close(again, first[[1, 0]])
    # a new process (empty memory) finds them on disk; other weights do not
    tiny_net.embedding_cache = EmbeddingCache(tmp_path / "cache")
    tiny_net.encode(images)
    assert calls == [2]
    torch.nn.init.normal_(tiny_net.image_encoder.neck[0].weight)
    tiny_net.load_state_dict(tiny_net.state_dict())  # a weight load invalidates the encoder id
    tiny_net.encode(images)
    assert calls == [2, 2]


def test_wrong_image_shape_is_a_clear_error(tiny_net):
    import pytest

    with pytest.raises(ValueError, match="expects images"):
        tiny_net(torch.randn(1, 3, 128, 128))


def test_a_network_built_without_weights_matches_the_one_it_loads_from():
    # the dense positional encoding derives from the prompt encoder's random Fourier matrix, which a
    # checkpoint replaces: inference (pretrained=False + model.pt) must equal the trained network
    import torch

    from bundle.networks import BLOSAM

    torch.manual_seed(0)
    trained = BLOSAM("sam_tiny").eval()
    torch.manual_seed(1)
    loaded = BLOSAM("sam_tiny", pretrained=False).eval()
    loaded.load_state_dict(trained.state_dict())
    x = torch.rand(1, 3, trained.input_size, trained.input_size)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))


def test_disk_cache_serves_meta_tensor_inputs_to_a_new_process(tmp_path):
    # MONAI data loaders yield MetaTensors; their embeddings must load in a later run (a fresh
    # cache object reading the same folder) instead of being dropped and recomputed every time
    import torch
    from monai.data import MetaTensor

    from bundle.networks import BLOSAM, EmbeddingCache

    torch.manual_seed(0)
    net = BLOSAM("sam_tiny", embedding_cache=EmbeddingCache(tmp_path)).eval()
    images = MetaTensor(torch.rand(2, 3, net.input_size, net.input_size), meta={"filename_or_obj": "x.png"})
    with torch.no_grad():
        first = net(images)
    later = EmbeddingCache(tmp_path)
    net.embedding_cache = later
    with torch.no_grad():
        again = net(images)
    assert later.hits == 2 and later.misses == 0
    assert torch.equal(torch.as_tensor(first), torch.as_tensor(again))
    assert len(list(tmp_path.rglob("*.pt"))) == 2
