"""Unit tests for vit_from_scratch.model (Chapter 5): config, sizes, counts, timm and torchvision layouts."""

import pytest
import torch
import torchvision
from _helpers import randomise as _randomise
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vit_from_scratch.interop import (
    config_from_torchvision,
    convert_torchvision_state_dict,
    timm_kwargs,
    torchvision_kwargs,
)
from vit_from_scratch.model import NAMED_SIZES, VisionTransformer, ViTConfig, vit_config
from vit_from_scratch.positions import resize_pos_embed

timm_vit = pytest.importorskip("timm.models.vision_transformer")

TINY = dict(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, num_heads=4)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    return _randomise(model, seed, scale=0.2)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- configuration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(TINY, pool="max"), "pool must be 'cls'"),
    (dict(TINY, pos_embed_type="rope"), "pos_embed_type must be 'learned' or 'sincos'"),
    (dict(TINY, num_heads=3), "must be divisible by num_heads=3"),
    (dict(TINY, patch_size=5), "does not divide the image size"),
    (dict(TINY, dim=34, num_heads=2, pos_embed_type="sincos"), "divisible by 4"),
    (dict(TINY, dropout=1.0), "dropout must be a probability"),
    (dict(TINY, depth=0), "depth must be a positive integer"),
    (dict(TINY, class_token=False), "pool='cls' reads the class token"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ViTConfig(**kwargs)


@pytest.mark.parametrize("field, value, message", [
    ("qkv_bias", "false", "qkv_bias must be True or False"),  # a non-empty string would be true
    ("dim", "32", "dim must be a whole number"),
    ("depth", 1.7, "depth must be a whole number"),
    ("num_heads", True, "num_heads must be a whole number"),
    ("mlp_ratio", float("inf"), "mlp_ratio must be a finite number"),
    ("norm_eps", float("nan"), "norm_eps must be a finite number"),
    ("dropout", "0.1", "dropout must be a finite number"),
    ("class_token", 1, "class_token must be True or False"),
    ("image_size", 99999999999999999999, "image_size must be a positive integer up to"),
    ("mlp_ratio", 1e308, "mlp_ratio must be positive and at most"),
])
def test_config_type_checks_every_field(field, value, message):
    """Issue 28.7, 28.13: a JSON string, a fraction or infinity in a field is refused, naming the field."""
    with pytest.raises((TypeError, ValueError), match=message) as info:
        ViTConfig.from_dict({**TINY, field: value})
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("overrides", [dict(image_size=2**24), dict(dim=2**20, depth=2**20)])
def test_config_refuses_a_model_no_machine_holds(overrides):
    """Issue 28.13: torch would fail with an overflow or allocation message that names no field."""
    with pytest.raises(ValueError, match="beyond any machine.*check image_size"):
        ViTConfig(**{**TINY, **overrides})


def test_config_round_trips_through_a_dict_and_rejects_unknown_fields():
    c = ViTConfig(**TINY, pool="mean", pos_embed_type="sincos")
    assert ViTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(TypeError, match="unknown ViTConfig field"):
        ViTConfig.from_dict({**c.to_dict(), "width": 3})
    with pytest.raises(TypeError, match="unknown ViTConfig field"):
        VisionTransformer(c, hidden=3)


def test_from_dict_reads_configs_saved_before_pos_embed_was_renamed_pos_embed_type():
    saved = {**TINY, "pos_embed": "sincos"}  # as checkpoints and weights JSON wrote it
    assert ViTConfig.from_dict(saved) == ViTConfig(**TINY, pos_embed_type="sincos")
    with pytest.raises(ValueError, match="keep only 'pos_embed_type'"):
        ViTConfig.from_dict({**saved, "pos_embed_type": "learned"})
    with pytest.raises(TypeError, match="'pos_embed' is now 'pos_embed_type'"):
        VisionTransformer(ViTConfig(**TINY), pos_embed="sincos")


def test_derived_sizes_of_vit_b16():
    c = vit_config("B/16")
    assert (c.grid_size, c.num_patches, c.num_tokens, c.mlp_dim) == ((14, 14), 196, 197, 3072)
    assert ViTConfig(**TINY, pool="mean").num_tokens == 16  # no class token with mean pooling


@pytest.mark.parametrize("alias, name", [("ViT-B/16", "B/16"), ("vit_b_16", "B/16"), ("h14", "H/14"),
                                         ("vit_cifar_tiny", "cifar-tiny"), ("cifar_small", "cifar-small"),
                                         ("ViT-Ti/16", "Ti/16")])
def test_named_sizes_accept_common_spellings(alias, name):
    assert vit_config(alias) == ViTConfig(**NAMED_SIZES[name])
    assert ViTConfig.named(alias, num_classes=10).num_classes == 10


def test_unknown_size_lists_the_known_ones():
    with pytest.raises(ValueError, match="known sizes: .*cifar-tiny"):
        vit_config("vit_gigantic")


# --- counting ------------------------------------------------------------------------------------------

# Dosovitskiy et al. (2021), Table 1; Touvron et al. (2021), Table 1 (DeiT-Ti 5M, DeiT-S 22M).
PAPER_PARAMS = {"Ti/16": 5.7e6, "S/16": 22e6, "B/16": 86e6, "L/16": 307e6, "H/14": 632e6}
# DeiT's "FLOPs" column counts multiply-accumulates: 1.3G, 4.6G, 17.6G.
DEIT_MACS = {"Ti/16": 1.3e9, "S/16": 4.6e9, "B/16": 17.6e9}


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_named_sizes_match_the_papers_parameter_counts(name):
    c = vit_config(name)
    assert abs(c.num_params() - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.01
    with torch.device("meta"):  # count without allocating memory
        model = VisionTransformer(c)
    assert n_params(model) == c.num_params()


@pytest.mark.parametrize("name", list(DEIT_MACS))
def test_named_sizes_match_deits_flop_counts(name):
    assert abs(vit_config(name).macs() - DEIT_MACS[name]) / DEIT_MACS[name] < 0.05  # DeiT rounds 1.25 to 1.3


@pytest.mark.parametrize("overrides", [{}, dict(pool="mean"), dict(pos_embed_type="sincos"), dict(qkv_bias=False),
                                       dict(pool="mean", class_token=True, fc_norm=False), dict(in_channels=1),
                                       dict(mlp_ratio=2.0)])
def test_parameter_formula_matches_the_model(overrides):
    c = ViTConfig(**{**TINY, **overrides})
    assert c.num_params() == n_params(VisionTransformer(c))


@pytest.mark.parametrize("overrides", [{}, dict(pool="mean"), dict(image_size=48, patch_size=4, dim=24, num_heads=2)])
def test_flop_formula_matches_torchs_flop_counter(overrides):
    c = ViTConfig(**{**TINY, **overrides})
    model = VisionTransformer(c).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, c.in_channels, c.image_size, c.image_size))  # MATH: attention as countable matmuls
    assert counter.get_total_flops() == c.flops() == 2 * c.macs()


# --- initialisation and forward --------------------------------------------------------------------------

def test_initialisation_follows_the_reference_implementations():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(**{**TINY, "dim": 128}))
    w = model.blocks[0].mlp.fc1.weight
    assert w.abs().max() <= 0.04 and abs(w.std().item() - 0.02 * 0.8796) < 0.001  # truncated at 2 std
    assert torch.count_nonzero(model.blocks[0].mlp.fc1.bias) == 0
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert model.cls_token.abs().max() < 1e-4
    logits = model(torch.randn(3, 3, 32, 32))
    assert torch.equal(logits, torch.zeros(3, 5)), "a zero head starts with every class equally likely"


def test_weight_init_skip_leaves_the_default_initialisation_for_a_subclass_to_finish():
    torch.manual_seed(0)
    initialised = VisionTransformer(ViTConfig(**TINY))
    torch.manual_seed(0)
    skipped = VisionTransformer(ViTConfig(**TINY), weight_init="skip")
    assert skipped.head.weight.abs().sum() > 0 and torch.all(skipped.cls_token == 0)  # not ViT's init
    skipped.init_weights()  # what a subclass calls once its own parts exist
    for (name, a), b in zip(initialised.state_dict().items(), skipped.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="weight_init must be 'vit'"):
        VisionTransformer(ViTConfig(**TINY), weight_init="jax")


def test_embed_layer_replaces_the_patch_embedding_without_building_the_default(monkeypatch):
    import vit_from_scratch.model as model_module
    from vit_from_scratch.patches import PatchEmbedding

    def refuse(**kwargs):
        raise AssertionError("the default PatchEmbedding was built")

    monkeypatch.setattr(model_module, "PatchEmbedding", refuse)
    made = []

    def factory(c: ViTConfig) -> nn.Module:
        made.append(PatchEmbedding(image_size=c.image_size, patch_size=c.patch_size, dim=c.dim))
        return made[-1]

    model = VisionTransformer(ViTConfig(**TINY), embed_layer=factory)
    assert model.patch_embed is made[0] and model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    module = PatchEmbedding(image_size=32, patch_size=8, dim=32)
    assert VisionTransformer(ViTConfig(**TINY), embed_layer=module).patch_embed is module
    with pytest.raises(ValueError, match=r"makes a \(8, 8\) grid of tokens"):
        VisionTransformer(ViTConfig(**TINY), embed_layer=PatchEmbedding(image_size=32, patch_size=4, dim=32))
    with pytest.raises(TypeError, match="without grid_size"):
        VisionTransformer(ViTConfig(**TINY), embed_layer=nn.Identity())


def test_forward_shapes_and_pooling():
    torch.manual_seed(0)
    for pool in ("cls", "mean"):
        model = randomise(VisionTransformer(ViTConfig(**TINY, pool=pool))).eval()
        x = torch.randn(2, 3, 32, 32)
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 16 + (pool == "cls"), 32)
        pooled = tokens[:, 0] if pool == "cls" else tokens.mean(dim=1)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), model.fc_norm(pooled))
        assert model(x).shape == (2, 5)
        assert (model.cls_token is None) == (pool == "mean")


def test_no_weight_decay_names_tokens_and_learned_positions_only():
    assert VisionTransformer(ViTConfig(**TINY)).no_weight_decay() == {"cls_token", "pos_embed"}
    assert VisionTransformer(ViTConfig(**TINY, pool="mean", pos_embed_type="sincos")).no_weight_decay() == set()


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = randomise(VisionTransformer(ViTConfig(**TINY))).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_torch_compile_gives_the_same_output_and_gradients():
    # On CPU the inductor backend spends ~30 s compiling C++; "aot_eager" runs the same graph capture
    # (TorchDynamo + AOTAutograd) without it. On a GPU the default backend is tested.
    backend = "inductor" if torch.cuda.is_available() else "aot_eager"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = randomise(VisionTransformer(ViTConfig(**TINY, pool="mean"))).to(device).eval()
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(2, 3, 32, 32, device=device)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    compiled(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-4)


# --- timm --------------------------------------------------------------------------------------------------

TIMM_CONFIGS = [
    dict(TINY),
    dict(TINY, pool="mean"),
    dict(image_size=48, patch_size=16, num_classes=10, dim=48, depth=3, num_heads=3),
    dict(image_size=28, patch_size=7, num_classes=3, dim=24, depth=1, num_heads=2, in_channels=1),
    dict(image_size=32, patch_size=4, num_classes=7, dim=64, depth=2, num_heads=8, pos_embed_type="sincos"),
    dict(image_size=32, patch_size=8, num_classes=4, dim=32, depth=2, num_heads=2, qkv_bias=False, mlp_ratio=2.0),
    dict(image_size=32, patch_size=8, num_classes=6, dim=32, depth=2, num_heads=4, pool="mean",
         class_token=True, fc_norm=False),
    dict(image_size=32, patch_size=8, num_classes=6, dim=32, depth=2, num_heads=4, norm_eps=1e-5),
]


@pytest.mark.parametrize("kwargs", TIMM_CONFIGS, ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_timm_weights_load_with_plain_load_state_dict_and_give_the_same_logits(kwargs):
    c = ViTConfig(**kwargs)
    torch.manual_seed(0)
    ref = randomise(timm_vit.VisionTransformer(**timm_kwargs(c))).eval()
    ours = VisionTransformer(c).eval()
    assert list(ours.state_dict()) == list(ref.state_dict()), "same keys, same order"
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, c.in_channels, c.image_size, c.image_size)
    torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    # and back: our weights drive timm's model
    ref2 = timm_vit.VisionTransformer(**timm_kwargs(c)).eval()
    ref2.load_state_dict(randomise(ours, seed=1).state_dict())
    torch.testing.assert_close(ref2(x), ours(x), rtol=1e-5, atol=1e-5)


# --- torchvision ---------------------------------------------------------------------------------------------

TV_CONFIGS = [
    dict(TINY),
    dict(image_size=48, patch_size=16, num_classes=10, dim=48, depth=3, num_heads=3),
    dict(image_size=32, patch_size=4, num_classes=1, dim=64, depth=1, num_heads=1, mlp_ratio=2.0),
]


@pytest.mark.parametrize("kwargs", TV_CONFIGS, ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_torchvision_models_convert_and_give_the_same_logits(kwargs):
    c = ViTConfig(**kwargs)
    torch.manual_seed(0)
    tv = randomise(torchvision.models.VisionTransformer(**torchvision_kwargs(c))).eval()
    x = torch.randn(2, 3, c.image_size, c.image_size)
    expected = tv(x)
    from_module = VisionTransformer.from_torchvision(tv).eval()
    assert from_module.config == c
    torch.testing.assert_close(from_module(x), expected, rtol=1e-5, atol=1e-5)
    from_state_dict = VisionTransformer.from_torchvision(tv.state_dict(), num_heads=c.num_heads).eval()
    torch.testing.assert_close(from_state_dict(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("builder, name", [("vit_b_16", "B/16"), ("vit_b_32", "B/32"), ("vit_l_16", "L/16"),
                                           ("vit_l_32", "L/32"), ("vit_h_14", "H/14")])
def test_torchvision_sizes_map_to_the_named_sizes(builder, name):
    with torch.device("meta"):
        tv = getattr(torchvision.models, builder)()
    assert config_from_torchvision(tv) == vit_config(name)
    assert config_from_torchvision(tv.state_dict()) == vit_config(name)  # heads guessed from the width
    assert n_params(tv) == vit_config(name).num_params()


def test_torchvision_state_dict_keys_are_renamed_to_timms():
    tv = torchvision.models.VisionTransformer(**torchvision_kwargs(ViTConfig(**TINY)))
    converted = convert_torchvision_state_dict(tv.state_dict())
    assert sorted(converted) == sorted(VisionTransformer(ViTConfig(**TINY)).state_dict())
    assert converted["blocks.1.attn.qkv.weight"] is tv.state_dict(keep_vars=True)[
        "encoder.layers.encoder_layer_1.self_attention.in_proj_weight"] or torch.equal(
        converted["blocks.1.attn.qkv.weight"], tv.encoder.layers[1].self_attention.in_proj_weight)


def test_torchvision_cannot_express_mean_pooling_and_says_so():
    with pytest.raises(ValueError, match=r"cannot express \['pool', 'class_token', 'fc_norm'\]"):
        torchvision_kwargs(ViTConfig(**TINY, pool="mean"))


def test_torchvision_representation_layer_is_refused_with_a_reason():
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                              hidden_dim=16, mlp_dim=32, num_classes=3, representation_size=8)
    with pytest.raises(ValueError, match="representation layer"):
        convert_torchvision_state_dict(tv.state_dict())


# --- errors ----------------------------------------------------------------------------------------------------

def test_wrong_image_size_names_the_expected_size_and_resize_pos_embed():
    model = VisionTransformer(ViTConfig(**TINY))
    with pytest.raises(ValueError, match=r"built for 32x32 images .* got 48x48.*resize_pos_embed"):
        model(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("size", [(32, 48), (30, 30), (30, 40)])  # not square, or not a multiple of 8
def test_wrong_image_size_suggests_no_model_that_cannot_exist(size):
    model = VisionTransformer(ViTConfig(**TINY))
    advice = r"Resize the images to 32x32 \(a ViTConfig's images are square, with sides a multiple of its "
    with pytest.raises(ValueError, match=advice + r"patch size, here 8 pixels; \d+x\d+ is not\)$") as info:
        model(torch.randn(1, 3, *size))
    assert "build a model" not in str(info.value) and "resize_pos_embed" not in str(info.value)


def test_wrong_channels_and_channels_last_are_explained():
    model = VisionTransformer(ViTConfig(**TINY))
    with pytest.raises(ValueError, match="expected 3-channel images, got 1 channel "):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"channels-last.*permute\(0, 3, 1, 2\)") as info:
        model(torch.randn(1, 32, 32, 3))
    assert "in_channels=32" not in str(info.value)  # a channels-last batch is not a 32-channel one
    with pytest.raises(ValueError, match=r"image.unsqueeze\(0\)"):
        model(torch.randn(3, 32, 32))


def test_incompatible_state_dict_lists_every_mismatch_and_how_to_fix_it():
    model = VisionTransformer(ViTConfig(**TINY))
    other = VisionTransformer(ViTConfig(**{**TINY, "num_classes": 7, "depth": 3}))
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(other.state_dict())
    message = str(info.value)
    assert "unexpected key(s)" in message and "blocks.2.norm1.weight" in message
    assert "head.weight: (7, 32) vs (5, 32)" in message and "head.bias: (7,) vs (5,)" in message
    assert "set depth=3" in message and "set num_classes" in message


def test_state_dict_hints_for_positions_prefixes_and_torchvision_layout():
    model = VisionTransformer(ViTConfig(**TINY))
    bigger = VisionTransformer(ViTConfig(**{**TINY, "image_size": 48})).state_dict()
    with pytest.raises(RuntimeError, match=r"pos_embed: \(1, 37, 32\) vs \(1, 17, 32\)(.|\n)*resize_pos_embed"):
        model.load_state_dict(bigger)
    prefixed = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="torch.compile wrapper"):
        model.load_state_dict(prefixed)
    tv = torchvision.models.VisionTransformer(**torchvision_kwargs(ViTConfig(**TINY)))
    with pytest.raises(RuntimeError, match="from_torchvision"):
        model.load_state_dict(tv.state_dict())


def test_resize_pos_embed_carries_weights_to_a_new_image_size():
    torch.manual_seed(0)
    small = randomise(VisionTransformer(ViTConfig(**TINY))).eval()
    sd = dict(small.state_dict())
    sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], new_grid=(6, 6), num_prefix_tokens=1)
    large = VisionTransformer(ViTConfig(**{**TINY, "image_size": 48})).eval()
    large.load_state_dict(sd)
    assert large(torch.randn(1, 3, 48, 48)).shape == (1, 5)


def test_a_new_head_can_be_fine_tuned_with_strict_false():
    pretrained = VisionTransformer(ViTConfig(**{**TINY, "num_classes": 1000})).state_dict()
    backbone = {k: v for k, v in pretrained.items() if not k.startswith("head.")}
    model = VisionTransformer(ViTConfig(**TINY))
    result = model.load_state_dict(backbone, strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"]
    assert torch.equal(model.pos_embed.detach(), pretrained["pos_embed"])


def test_the_named_size_cifar_cpu_is_the_model_chapter_6_trains():
    """Chapter 5 names `cifar-cpu` as the model chapter 6 trains (preset "cifar10-cpu"): they must not drift."""
    from dataclasses import fields

    from vit_from_scratch.recipe import preset

    trained = preset("cifar10-cpu").model
    named = ViTConfig.named("cifar-cpu")
    assert isinstance(trained, ViTConfig)
    differing = {f.name: (getattr(trained, f.name), getattr(named, f.name)) for f in fields(ViTConfig)
                 if getattr(trained, f.name) != getattr(named, f.name)}
    # The preset trains its first epochs at a lower resolution (low_res_size) but builds the model at
    # 32 px, so even image_size agrees.
    assert not differing, f"preset 'cifar10-cpu' vs named size 'cifar-cpu' (preset, named): {differing}"
