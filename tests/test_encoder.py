"""Unit tests for vit_from_scratch.encoder (Chapter 4): MLP, DropPath, the pre-norm block, the stack."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_from_scratch.encoder import MLP, DropPath, Encoder, EncoderBlock, block_num_params
from _helpers import randomise

timm_layers = pytest.importorskip("timm.layers")
timm_vit = pytest.importorskip("timm.models.vision_transformer")


# --- MLP --------------------------------------------------------------------------------------------

def test_mlp_hidden_width_defaults_to_four_times_the_width():
    mlp = MLP(48)
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (48, 192, 48)
    assert MLP(48, mlp_ratio=2.0).fc1.out_features == 96
    assert MLP(48, 100).fc1.out_features == 100


def test_mlp_is_fc2_gelu_fc1_applied_to_each_token_alone():
    torch.manual_seed(0)
    mlp, x = MLP(16), torch.randn(2, 7, 16)
    expected = F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    torch.testing.assert_close(mlp(x), expected)
    perm = torch.randperm(7)
    torch.testing.assert_close(mlp(x[:, perm]), mlp(x)[:, perm])  # no mixing between tokens
    torch.testing.assert_close(mlp(x[:, :1]), mlp(x)[:, :1])


def test_mlp_matches_timm_mlp():
    torch.manual_seed(0)
    ours, ref = MLP(24, mlp_ratio=3.0), timm_layers.Mlp(24, hidden_features=72)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=16, mlp_ratio=0.0), "mlp_ratio must be positive"),
    (dict(dim=0), "widths must be positive"),
    (dict(dim=16, dropout=1.0), "dropout must be a probability in [0, 1)"),
    (dict(dim=16, dropout=-0.1), "dropout must be a probability in [0, 1), got -0.1"),
])
def test_mlp_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
        MLP(**kwargs)


# --- DropPath ---------------------------------------------------------------------------------------

def test_drop_path_is_identity_in_eval_mode_and_at_zero():
    x = torch.randn(8, 5, 4)
    assert torch.equal(DropPath(0.5).eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_drop_path_drops_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    p, x = 0.25, torch.ones(4000, 3, 2)
    y = DropPath(p).train()(x)
    per_sample = y.flatten(1)
    dropped = (per_sample == 0).all(dim=1)
    kept = (per_sample == 1 / (1 - p)).all(dim=1)
    assert bool((dropped | kept).all()), "every sample is either dropped entirely or kept and scaled"
    assert abs(dropped.float().mean().item() - p) < 0.03
    assert abs(y.mean().item() - 1.0) < 0.05, "the expectation is unchanged"


def test_drop_path_matches_timm_with_the_same_random_numbers():
    x = torch.randn(64, 5, 8)
    torch.manual_seed(3)
    ours = DropPath(0.3).train()(x)
    torch.manual_seed(3)
    ref = timm_layers.DropPath(0.3).train()(x)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_drop_path_rejects_rates_outside_0_1(p):
    with pytest.raises(ValueError, match="drop_path must be a probability"):
        DropPath(p)


# --- the block ----------------------------------------------------------------------------------------

def test_block_is_the_two_pre_norm_residual_equations():
    torch.manual_seed(0)
    block, x = randomise(EncoderBlock(32, 4)).eval(), torch.randn(2, 9, 32)
    h = x + block.attn(block.norm1(x))
    expected = h + block.mlp(block.norm2(h))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("dim, heads, mlp_ratio, qkv_bias", [(32, 4, 4.0, True), (48, 3, 2.0, False), (64, 1, 4.0, True)])
def test_block_matches_timm_block(dim, heads, mlp_ratio, qkv_bias):
    torch.manual_seed(0)
    ours = randomise(EncoderBlock(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)).eval()
    ref = timm_vit.Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    ref.load_state_dict(ours.state_dict())  # same key names, nothing renamed
    x = torch.randn(2, 11, dim)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_block_returns_the_same_output_with_attention_weights():
    torch.manual_seed(0)
    block, x = randomise(EncoderBlock(32, 4)).eval(), torch.randn(2, 9, 32)
    out, weights = block(x, return_attention=True)
    torch.testing.assert_close(out, block(x), rtol=1e-5, atol=1e-5)
    assert weights.shape == (2, 4, 9, 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 9))


def test_block_with_zero_branches_is_the_identity():
    block = EncoderBlock(16, 2)
    for linear in (block.attn.proj, block.mlp.fc2):
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(block(x), x)


def test_block_regularisers_act_only_in_training():
    torch.manual_seed(0)
    plain = randomise(EncoderBlock(32, 4))
    noisy = EncoderBlock(32, 4, dropout=0.2, attn_dropout=0.2, drop_path=0.3)
    noisy.load_state_dict(plain.state_dict())
    x = torch.randn(4, 9, 32)
    plain.eval(), noisy.eval()
    torch.testing.assert_close(noisy(x), plain(x))  # eval: exactly the plain block
    noisy.train()
    assert not torch.allclose(noisy(x), noisy(x)), "training mode draws new masks on every call"


@pytest.mark.parametrize("dim", [8, 64, 192, 768])
@pytest.mark.parametrize("mlp_ratio, qkv_bias", [(4.0, True), (2.0, True), (4.0, False)])
def test_block_parameter_formula(dim, mlp_ratio, qkv_bias):
    heads = 4 if dim % 4 == 0 else 1
    block = EncoderBlock(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
    assert block_num_params(dim, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias) == sum(p.numel() for p in block.parameters())
    if mlp_ratio == 4.0 and qkv_bias:
        assert block_num_params(dim) == 12 * dim**2 + 13 * dim


def test_block_rejects_tokens_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"expected tokens shaped \(batch, tokens, 16\), got shape \(1, 5, 8\)"):
        EncoderBlock(16, 2)(torch.randn(1, 5, 8))


@pytest.mark.parametrize("rate", ["dropout", "attn_dropout", "drop_path"])
@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_block_rejects_rates_outside_0_1(rate, p):
    with pytest.raises(ValueError, match=rf"^{rate} must be a probability in \[0, 1\), got {p}; use 0.0"):
        EncoderBlock(16, 2, **{rate: p})


def test_block_rejects_bad_rates():
    with pytest.raises(ValueError, match="attn_dropout must be a probability"):
        EncoderBlock(16, 2, attn_dropout=1.0)
    with pytest.raises(ValueError, match="divisible by the number of heads"):
        EncoderBlock(30, 4)


# --- the stack -----------------------------------------------------------------------------------------

def test_encoder_stacks_depth_blocks_with_timm_key_names_and_keeps_shapes():
    enc = Encoder(32, 3, 4)
    assert len(enc) == 3 and all(isinstance(b, EncoderBlock) for b in enc)
    assert "2.mlp.fc2.weight" in enc.state_dict()
    x = torch.randn(2, 10, 32)
    assert enc(x).shape == x.shape


def test_encoder_drop_path_grows_linearly():
    enc = Encoder(16, 5, 2, drop_path=0.2)
    rates = [b.drop_path1.p for b in enc]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert [b.drop_path2.p for b in enc] == rates
    assert Encoder(16, 1, 2, drop_path=0.2)[0].drop_path1.p == 0.0


def test_encoder_returns_one_attention_map_per_block():
    torch.manual_seed(0)
    enc, x = Encoder(32, 3, 4).eval(), torch.randn(2, 10, 32)
    out, maps = enc(x, return_attention=True)
    torch.testing.assert_close(out, enc(x), rtol=1e-5, atol=1e-5)
    assert len(maps) == 3 and all(m.shape == (2, 4, 10, 10) for m in maps)


def test_encoder_matches_a_timm_stack():
    torch.manual_seed(0)
    ours = randomise(Encoder(32, 3, 4)).eval()
    ref = nn.Sequential(*[timm_vit.Block(32, 4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
                          for _ in range(3)]).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rates", [dict(drop_path=-0.1), dict(dropout=-0.1), dict(attn_dropout=-0.1)])
def test_encoder_rejects_a_negative_rate(rates):
    (name, p), = rates.items()
    with pytest.raises(ValueError, match=rf"^{name} must be a probability in \[0, 1\), got {p}"):
        Encoder(16, 2, 2, **rates)


def test_encoder_rejects_an_empty_stack():
    with pytest.raises(ValueError, match="at least one block"):
        Encoder(16, 0, 2)
