"""Unit tests for vit_from_scratch.attention (Chapter 3)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_from_scratch.attention import MultiHeadSelfAttention, attention

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=0.0, atol=3e-2)}


def torch_mha_with_same_weights(ours: MultiHeadSelfAttention) -> nn.MultiheadAttention:
    """``nn.MultiheadAttention`` holding a copy of our weights (same q, k, v row order)."""
    dim = ours.qkv.in_features
    ref = nn.MultiheadAttention(dim, ours.num_heads, bias=True, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    return ref.eval()


def sdpa_reference(m: MultiHeadSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The same layer written with three separate projections and ``F.scaled_dot_product_attention``."""
    B, N, D = x.shape
    Wq, Wk, Wv = m.qkv.weight.chunk(3)
    bq, bk, bv = m.qkv.bias.chunk(3)
    heads = lambda t: t.reshape(B, N, m.num_heads, m.head_dim).transpose(1, 2)  # noqa: E731
    q, k, v = heads(F.linear(x, Wq, bq)), heads(F.linear(x, Wk, bk)), heads(F.linear(x, Wv, bv))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
    return m.proj(out)


# --- scaled dot-product attention --------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 8), (2, 3, 7, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_matches_sdpa(shape, dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape).to(dtype) for _ in range(3))
    out, weights = attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL[dtype])
    assert weights.shape == shape[:-1] + (shape[-2],)


def test_attention_with_fewer_keys_than_queries():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 6)
    out, weights = attention(q, k, v)
    assert out.shape == (2, 5, 6) and weights.shape == (2, 5, 3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_attention_weights_are_a_distribution_over_keys():
    torch.manual_seed(0)
    _, weights = attention(*(torch.randn(3, 6, 4) for _ in range(3)))
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 6))


def test_attention_scale_is_one_over_sqrt_of_the_key_width():
    torch.manual_seed(0)
    q, k, v = torch.randn(5, 16), torch.randn(5, 16), torch.randn(5, 2)
    _, weights = attention(q, k, v)
    torch.testing.assert_close(weights, ((q @ k.T) / 4.0).softmax(-1))  # sqrt(16) = 4
    assert not torch.allclose(weights, (q @ k.T).softmax(-1))


def test_attention_gradcheck_float64():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v)[0], (q, k, v))


# --- multi-head self-attention -----------------------------------------------------------------

@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("batch, tokens", [(1, 1), (3, 5), (2, 17)])
@pytest.mark.parametrize("return_attention", [False, True])
def test_mhsa_matches_torch_multihead_attention(heads, batch, tokens, return_attention):
    torch.manual_seed(0)
    m = MultiHeadSelfAttention(16, heads).eval()
    ref = torch_mha_with_same_weights(m)
    x = torch.randn(batch, tokens, 16)
    with torch.no_grad():
        ref_out, ref_w = ref(x, x, x, need_weights=True, average_attn_weights=False)
        result = m(x, return_attention=return_attention)
    out = result[0] if return_attention else result
    torch.testing.assert_close(out, ref_out, **TOL[torch.float32])
    if return_attention:
        assert result[1].shape == (batch, heads, tokens, tokens)
        torch.testing.assert_close(result[1], ref_w, **TOL[torch.float32])


@pytest.mark.parametrize("heads", [1, 3, 6])
@pytest.mark.parametrize("return_attention", [False, True])
def test_mhsa_matches_separate_projections_and_sdpa(heads, return_attention):
    torch.manual_seed(0)
    m = MultiHeadSelfAttention(24, heads).eval()
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        result = m(x, return_attention=return_attention)
        out = result[0] if return_attention else result
        torch.testing.assert_close(out, sdpa_reference(m, x), **TOL[torch.float32])


@pytest.mark.parametrize("heads", [2, 4])
def test_mhsa_bfloat16_matches_float32_within_tolerance(heads):
    torch.manual_seed(0)
    m = MultiHeadSelfAttention(32, heads).eval()
    x = torch.randn(2, 10, 32)
    m16 = MultiHeadSelfAttention(32, heads).eval()
    m16.load_state_dict(m.state_dict())
    m16 = m16.to(torch.bfloat16)
    with torch.no_grad():
        ref = torch_mha_with_same_weights(m)(x, x, x, need_weights=False)[0]
        fast = m16(x.to(torch.bfloat16))
        explicit, weights = m16(x.to(torch.bfloat16), return_attention=True)
    assert fast.dtype == explicit.dtype == weights.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), ref, **TOL[torch.bfloat16])
    torch.testing.assert_close(explicit.float(), ref, **TOL[torch.bfloat16])


def test_mhsa_fast_and_explicit_paths_give_the_same_output():
    torch.manual_seed(0)
    m = MultiHeadSelfAttention(32, 4).eval()
    x = torch.randn(3, 11, 32)
    with torch.no_grad():
        fast = m(x)
        explicit, weights = m(x, return_attention=True)
    torch.testing.assert_close(fast, explicit)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 11))


def test_mhsa_is_permutation_equivariant():
    torch.manual_seed(0)
    m = MultiHeadSelfAttention(16, 2).eval()
    x, perm = torch.randn(2, 7, 16), torch.randperm(7)
    with torch.no_grad():
        torch.testing.assert_close(m(x[:, perm]), m(x)[:, perm])


@pytest.mark.parametrize("return_attention", [False, True])
def test_mhsa_gradcheck_float64(return_attention):
    torch.manual_seed(0)
    m = MultiHeadSelfAttention(4, 2).double()
    x = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    fn = (lambda x: m(x, return_attention=True)[0]) if return_attention else m
    assert torch.autograd.gradcheck(fn, (x,))


def test_mhsa_gradients_reach_every_parameter():
    m = MultiHeadSelfAttention(8, 2)
    m(torch.randn(2, 5, 8)).pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("return_attention", [False, True])
def test_mhsa_attention_dropout_only_in_training(return_attention):
    torch.manual_seed(0)
    m = MultiHeadSelfAttention(16, 2, attn_dropout=0.5)
    x = torch.randn(2, 8, 16)
    run = (lambda: m(x, return_attention=True)[0]) if return_attention else (lambda: m(x))
    with torch.no_grad():
        m.train()
        a, b = run(), run()
        m.eval()
        c, d = run(), run()
    assert not torch.allclose(a, b)  # a fresh dropout mask each call
    assert torch.equal(c, d)  # no dropout in evaluation
    assert not torch.allclose(a, c)


def test_mhsa_returned_weights_are_before_dropout():
    torch.manual_seed(0)
    m = MultiHeadSelfAttention(16, 2, attn_dropout=0.5).train()
    _, weights = m(torch.randn(2, 8, 16), return_attention=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 8))


def test_mhsa_state_dict_uses_timm_names():
    assert set(MultiHeadSelfAttention(8, 2).state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}


# --- errors ------------------------------------------------------------------------------------

def test_mhsa_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"width 100 must be divisible by the number of heads 3.*\[1, 2, 4, 5, 10\]"):
        MultiHeadSelfAttention(100, 3)


@pytest.mark.parametrize("shape", [(5, 16), (2, 2, 5, 16)])
def test_mhsa_rejects_wrong_input_rank(shape):
    with pytest.raises(ValueError, match=r"expected tokens shaped \(batch, tokens, dim\)"):
        MultiHeadSelfAttention(16, 2)(torch.randn(shape))


def test_mhsa_rank_error_suggests_unsqueeze_for_one_sequence():
    with pytest.raises(ValueError, match=r"x\.unsqueeze\(0\)"):
        MultiHeadSelfAttention(16, 2)(torch.randn(5, 16))


def test_mhsa_rejects_wrong_width():
    with pytest.raises(ValueError, match="expected width 16, got 12"):
        MultiHeadSelfAttention(16, 2)(torch.randn(1, 5, 12))


def test_attention_rejects_mismatched_query_and_key_width():
    with pytest.raises(ValueError, match="same width"):
        attention(torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 5))
    with pytest.raises(ValueError, match="every key needs one value"):
        attention(torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4))


def test_attention_bias_is_added_to_the_scores_like_sdpa_attn_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    bias = torch.randn(3, 5, 5)
    bias[:, 0, 1:] = float("-inf")  # the first query may only see the first key
    out, weights = attention(q, k, v, bias=bias)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), **TOL[torch.float32])
    assert torch.all(weights[..., 0, 1:] == 0) and torch.allclose(weights[..., 0, 0], torch.ones(()))
