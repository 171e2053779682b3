"""Chapter 7: tests that can fail, for what the attention maps and Figure 7 seem to say.

Letters as in :mod:`vit_from_scratch.attention_maps`: B images, L layers, nh heads, N = h*w patches,
S tokens, P patch size, C channels, R bootstrap resamples.

- Entropy of a map comes in two kinds, named apart: the *mean of the heads' entropies* (how selective a
  typical head is) and the *entropy of the heads' mean map* (how selective the layer is as a whole; never
  below the first, since averaging maps spreads them).
- Every verdict carries its spread over images (a bootstrap interval) and, when weights of a second
  trained seed exist, over seeds (:func:`verdict`).
- Position tables are scored by rank statistics with a permutation test (:func:`position_structure`),
  so a table's overall level of similarity does not decide the score.
- Patch filters' smoothness is compared with raw image patches (:func:`filter_roughness`).
- Faithfulness: deleting the most-attended patches against as many random ones (:func:`deletion_test`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .attention_maps import TokenLayout, attention_rollout, collect_attention, fuse_heads, pooled_attention
from .checkpoints import WEIGHTS_DIR, load_trained_model
from .patches import patchify

__all__ = ["ENTROPIES", "SEED_NAMES", "SEED1_COMMAND", "normalised_entropy", "layer_entropies", "Estimate",
           "bootstrap", "Verdict", "verdict", "PositionScore", "position_structure", "filter_roughness",
           "image_patches", "patch_scores", "delete_patches", "deletion_test", "load_seed_models"]

# The two entropies of a layer's class-token maps, by the names the chapter prints.
ENTROPIES = ("mean of the heads' entropies", "entropy of the heads' mean map")
SEED_NAMES = ("cifar10_vit", "cifar10_vit_seed1")  # chapter 6's recipe, seeds 0 and 1
SEED1_COMMAND = ("python -m vit_from_scratch.cli --preset cifar10-cpu --seed 1 --monitor test "  # all 50,000 images
                 "--export cifar10_vit_seed1")


# Entropy ---------------------------------------------------------------------------------------
def normalised_entropy(maps: Tensor) -> Tensor:
    """Entropy of maps over their last axis (each renormalised to sum to one), as a fraction of log N.

    1 for a uniform map, 0 for a map on one patch.

    Shape:
        (..., N) -> (...)
    """
    if maps.shape[-1] < 2:
        raise ValueError(f"a map needs at least two entries to have an entropy, got shape {tuple(maps.shape)}")
    p = maps.double().clamp_min(1e-12)
    p = p / p.sum(-1, keepdim=True)
    return (-(p * p.log()).sum(-1) / math.log(maps.shape[-1])).float()


def layer_entropies(weights: Tensor, layout: TokenLayout) -> dict[str, Tensor]:
    """Both entropies of every layer's maps, per image, and that of the rollout through each layer.

    ``ENTROPIES[0]``: each head's map has its entropy; their mean over the heads. ``ENTROPIES[1]``: the
    heads' maps are averaged first, then the entropy of that one map. ``"rollout"``: the rollout map
    (heads averaged in every layer) through layers 1..l.

    Shape:
        (B, L, nh, S, S) -> each (B, L)
    """
    per_head = normalised_entropy(pooled_attention(weights, layout))  # (B, L, nh)
    mean_map = normalised_entropy(pooled_attention(fuse_heads(weights, "mean"), layout))  # (B, L)
    rollout = normalised_entropy(pooled_attention(attention_rollout(weights), layout))  # (B, L)
    return {ENTROPIES[0]: per_head.mean(-1), ENTROPIES[1]: mean_map, "rollout": rollout}


# Spread over images and seeds ------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A statistic of a set of images and its bootstrap interval over those images."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:+.3f} ({self.low:+.3f}..{self.high:+.3f})"


def _mean_over_images(resampled: Tensor) -> Tensor:
    return resampled.double().mean(dim=1)  # (R, B) -> (R,)


def bootstrap(values: Tensor, statistic: Callable[[Tensor], Tensor] | None = None, *, resamples: int = 1000,
              level: float = 0.95, seed: int = 0) -> Estimate:
    """The statistic of per-image ``values`` and its percentile bootstrap interval over the images.

    ``statistic`` maps ``R`` sets of images, ``(R, B, ...)``, to ``(R,)``; the default is the mean of
    ``(B,)`` values. The resamples are drawn from their own seeded generator.

    Shape:
        values (B, ...) -> one Estimate
    """
    if values.ndim < 1 or len(values) < 2:
        raise ValueError(f"need per-image values for at least two images, got shape {tuple(values.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be a fraction in (0, 1), e.g. 0.95, got {level}")
    statistic = statistic or _mean_over_images
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(values), (resamples, len(values)), generator=generator)  # (R, B)
    stats = statistic(values.cpu()[index]).double()  # (R, B, ...) -> (R,)
    low, high = torch.quantile(stats, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return Estimate(float(statistic(values.cpu()[None])[0]), float(low), float(high))


@dataclass(frozen=True)
class Verdict:
    """Is a statistic above or below a threshold, beyond its spread over images and over seeds?

    ``per_seed``: the statistic and its bootstrap interval over images, one per trained seed.
    ``seeds``: the comparison of the seeds' values with the threshold by ``compare`` (with two seeds or
    more; ``learning_curve.compare_seeds``), else None.
    """

    per_seed: tuple[Estimate, ...]
    threshold: float
    seeds: object | None = None

    @property
    def side(self) -> str:
        """``"above"`` or ``"below"`` the threshold, or ``"within noise"``."""
        if all(e.low > self.threshold for e in self.per_seed):
            side = "above"
        elif all(e.high < self.threshold for e in self.per_seed):
            side = "below"
        else:
            return "within noise"
        if self.seeds is not None and self.seeds.verdict != {"above": "higher", "below": "lower"}[side]:
            return "within noise"
        return side

    @property
    def value(self) -> float:
        """The statistic, averaged over the seeds."""
        return sum(e.value for e in self.per_seed) / len(self.per_seed)

    def spread(self, points: bool = False) -> str:
        """The intervals over images, one per seed, and the spread over seeds: for a sentence. ``points``:
        the statistic is a share (an accuracy), written in percentage points like its value."""
        def number(x: float, sign: str = "+") -> str:
            return f"{100 * x:{sign}.1f}" if points else f"{x:{sign}.3f}"

        unit = " points" if points else ""
        text = "; ".join(f"seed {k}: {number(e.value)}{unit}, 95% interval over images "
                         f"{number(e.low)}..{number(e.high)}" for k, e in enumerate(self.per_seed))
        if self.seeds is None:
            return text + "; one trained seed, so no spread over seeds"
        return text + f"; spread over seeds {number(self.seeds.noise, '')}{unit}"


def verdict(per_seed_values: Sequence[Tensor], statistic: Callable[[Tensor], Tensor] | None = None, *,
            threshold: float = 0.0, compare: Callable | None = None, resamples: int = 1000) -> Verdict:
    """The one rule of the chapter for a verdict: a statistic of the images, against a threshold.

    It is called above (below) the threshold only when, for *every* trained seed, the bootstrap 95%
    interval over images lies wholly above (below) it; and, with two seeds or more, when ``compare``
    (pass ``learning_curve.compare_seeds``) finds the seeds' values beyond their spread in that same
    direction. Otherwise "within noise". A paired difference of two quantities per image (e.g. layer 1
    minus layer 6) against ``threshold=0`` compares them.

    Shape:
        per_seed_values: one (B, ...) tensor per seed, the same images in each
    """
    if not per_seed_values:
        raise ValueError("give the per-image values of at least one trained seed")
    estimates = tuple(bootstrap(v, statistic, resamples=resamples, seed=k) for k, v in enumerate(per_seed_values))
    seeds = None
    if len(estimates) >= 2:
        if compare is None:
            raise ValueError("with two seeds or more pass compare=learning_curve.compare_seeds, the book's "
                             "one rule for a difference over seeds")
        seeds = compare([e.value for e in estimates], [threshold] * len(estimates))
    return Verdict(estimates, float(threshold), seeds)


# Position tables -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PositionScore:
    """Rank scores of a position table's similarity structure, each with a permutation p-value."""

    neighbourhood: float
    neighbourhood_p: float
    row_column: float
    row_column_p: float


def _ranks(x: Tensor) -> Tensor:
    return x.argsort(dim=-1).argsort(dim=-1).double()  # (..., M): 0 = smallest


def _structure_scores(pair_sim: Tensor, distance_rank: Tensor, design: Tensor,
                      same_line: Tensor) -> tuple[Tensor, Tensor]:
    r = _ranks(pair_sim)  # (..., M)
    r = r - r.mean(-1, keepdim=True)
    d = distance_rank - distance_rank.mean()
    neighbourhood = -(r * d).sum(-1) / (r.norm(dim=-1) * d.norm())  # Spearman(similarity, -distance)
    residual = r - (r @ torch.linalg.pinv(design).T) @ design.T  # (..., M): distance's part removed
    contrast = residual[..., same_line].mean(-1) - residual[..., ~same_line].mean(-1)
    return neighbourhood, contrast / residual.std(dim=-1).clamp_min(1e-12)


def position_structure(similarity: Tensor, *, permutations: int = 1000, seed: int = 0) -> PositionScore:
    """How 2-D a position table's similarity map is, by two rank scores that ignore its overall level.

    Over all pairs of distinct positions: ``neighbourhood`` is Spearman's rank correlation between the
    similarity and minus the distance on the grid (1: nearer is always more similar; 0 for pure noise).
    ``row_column``: the similarity ranks, with a quadratic in the distance ranks regressed out, averaged
    over pairs in one row or column minus the other pairs, in units of the residuals' spread (pairs on a
    line more alike than their distance says). Each p-value: the share of random reassignments of the
    table's rows to grid positions that score at least as high.

    Shape:
        similarity (h, w, h, w), as ``positions.position_similarity`` returns
    """
    if similarity.ndim != 4 or similarity.shape[:2] != similarity.shape[2:]:
        raise ValueError(f"expected a similarity map shaped (h, w, h, w), got {tuple(similarity.shape)}; "
                         "pass positions.position_similarity(table, grid_size)")
    h, w = similarity.shape[:2]
    n = h * w
    sim = similarity.reshape(n, n).double()
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)  # (N,) each
    i, j = torch.triu_indices(n, n, 1)  # the M = N(N-1)/2 pairs
    dr, dc = (rows[i] - rows[j]).double(), (cols[i] - cols[j]).double()
    distance_rank = _ranks((dr**2 + dc**2).sqrt())  # (M,)
    design = torch.stack([torch.ones_like(distance_rank), distance_rank, distance_rank**2], dim=1)  # (M, 3)
    same_line = (dr == 0) | (dc == 0)
    observed = _structure_scores(sim[i, j], distance_rank, design, same_line)
    generator = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(permutations)])  # (Q, N)
    shuffled = sim[perms[:, i], perms[:, j]]  # (Q, M): the table's rows put on other positions
    null = _structure_scores(shuffled, distance_rank, design, same_line)
    p = [((q >= o - 1e-12).sum().item() + 1) / (permutations + 1) for o, q in zip(observed, null)]
    return PositionScore(observed[0].item(), p[0], observed[1].item(), p[1])


# Patch filters ---------------------------------------------------------------------------------
def filter_roughness(components: Tensor) -> Tensor:
    """Mean squared difference of neighbouring pixels of each component, relative to its variance.

    0 for a flat component, about 2 for white noise: the smaller, the smoother.

    Shape:
        (k, C, P, P) -> (k,)
    """
    if components.ndim != 4 or components.shape[-1] < 2 or components.shape[-2] < 2:
        raise ValueError(f"expected components shaped (k, C, P, P) with P >= 2, got {tuple(components.shape)}")
    comp = components.double()
    dy = (comp[..., 1:, :] - comp[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
    dx = (comp[..., :, 1:] - comp[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    return ((dx + dy) / (2 * comp.flatten(1).var(dim=1))).float()


def image_patches(images: Tensor, patch_size: int, count: int, *, seed: int = 0) -> Tensor:
    """A seeded random sample of ``count`` patches of the images, each shaped like a patch filter.

    Shape:
        images (B, C, H, W) -> (count, C, P, P)
    """
    flat = patchify(images, patch_size).flatten(0, 1)  # (B, N, C*P*P) -> (B*N, C*P*P)
    if not 0 < count <= len(flat):
        raise ValueError(f"count must be between 1 and the {len(flat)} patches of the images, got {count}")
    pick = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:count]
    return flat[pick].reshape(count, images.shape[1], patch_size, patch_size)


# Faithfulness ----------------------------------------------------------------------------------
@torch.no_grad()
def patch_scores(model: nn.Module, inputs: Tensor, layout: TokenLayout, *, method: str = "attention",
                 batch_size: int = 250) -> Tensor:
    """How much the read-out attends to each patch: the last layer's map with the heads averaged
    (``"attention"``), or the rollout through all layers (``"rollout"``). Computed in batches.

    Shape:
        inputs (B, C, H, W), normalised -> (B, N)
    """
    if method not in ("attention", "rollout"):
        raise ValueError(f"method must be 'attention' or 'rollout', got {method!r}")
    scores = []
    for chunk in inputs.split(batch_size):
        _, weights = collect_attention(model, chunk)  # (b, L, nh, S, S)
        fused = attention_rollout(weights)[:, -1] if method == "rollout" else fuse_heads(weights[:, -1])
        scores.append(pooled_attention(fused, layout).cpu())  # (b, S, S) -> (b, N)
    return torch.cat(scores)


def delete_patches(inputs: Tensor, patches: Tensor, layout: TokenLayout, value: float = 0.0) -> Tensor:
    """Set the pixels of the given patches to ``value`` (0: the channels' mean, for normalised inputs).

    Shape:
        inputs (B, C, H, W), patches (B, k) patch indices in row-major order -> (B, C, H, W)
    """
    h, w = layout.grid_size
    P = layout.patch_size
    if patches.ndim != 2 or len(patches) != len(inputs) or bool((patches < 0).any() | (patches >= h * w).any()):
        raise ValueError(f"patches must be (B, k) indices in 0..{h * w - 1} for the {len(inputs)} images, got "
                         f"shape {tuple(patches.shape)}")
    keep = torch.ones(len(inputs), h * w, device=inputs.device)  # (B, N)
    keep.scatter_(1, patches.to(inputs.device), 0.0)
    keep = keep.reshape(-1, 1, h, w).repeat_interleave(P, 2).repeat_interleave(P, 3)  # (B, 1, H, W)
    return inputs * keep + value * (1 - keep)


@torch.no_grad()
def _true_class(model: nn.Module, inputs: Tensor, labels: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    probs = torch.cat([model(x).softmax(-1).cpu() for x in inputs.split(batch_size)])  # (B, K)
    labels = labels.cpu()
    return probs.gather(1, labels[:, None])[:, 0], (probs.argmax(-1) == labels).float()


def deletion_test(model: nn.Module, inputs: Tensor, labels: Tensor, scores: Tensor, layout: TokenLayout, *,
                  k: int, random_draws: int = 5, seed: int = 0, batch_size: int = 250) -> dict[str, Tensor]:
    """Delete (set to the channels' mean) the ``k`` highest-scoring patches of each image, and ``k``
    random patches instead; return per image the true class's probability and whether it is predicted.

    Keys ``"clean"``, ``"most attended"``, ``"random"`` (averaged over ``random_draws`` seeded draws),
    each with ``" p"`` (probability of the true class) and ``" correct"`` (0 or 1; a fraction for random).

    Shape:
        inputs (B, C, H, W) normalised, labels (B,), scores (B, N) -> each (B,)
    """
    n = layout.num_patches
    if scores.shape != (len(inputs), n):
        raise ValueError(f"scores must be (B, N) = {(len(inputs), n)}, one per patch, got {tuple(scores.shape)}")
    if not 0 < k < n:
        raise ValueError(f"k must be between 1 and {n - 1} patches, got {k}")
    out = {}
    out["clean p"], out["clean correct"] = _true_class(model, inputs, labels, batch_size)
    top = scores.topk(k, dim=1).indices  # (B, k)
    out["most attended p"], out["most attended correct"] = _true_class(
        model, delete_patches(inputs, top, layout), labels, batch_size)
    generator = torch.Generator().manual_seed(seed)
    draws = [_true_class(model, delete_patches(inputs, torch.rand(len(inputs), n, generator=generator)
                                               .argsort(1)[:, :k], layout), labels, batch_size)
             for _ in range(random_draws)]
    out["random p"] = torch.stack([p for p, _ in draws]).mean(0)
    out["random correct"] = torch.stack([c for _, c in draws]).mean(0)
    return out


# The trained seeds -----------------------------------------------------------------------------
def load_seed_models(names: Sequence[str] = SEED_NAMES, *, device=None, directory=WEIGHTS_DIR
                     ) -> tuple[list[nn.Module], list[dict], list[str]]:
    """Load every trained seed whose weights exist; return the models, their infos and the missing names.

    The first name must load (it is the chapter's model); a later one that is missing is reported, not
    raised, so that the chapter runs with the seeds it has.
    """
    models, infos, missing = [], [], []
    for k, name in enumerate(names):
        if k > 0 and not (Path(directory) / f"{name}.pt").exists():
            missing.append(name)
            continue
        model, info = load_trained_model(name, device=device, directory=directory)
        models.append(model)
        infos.append(info)
    return models, infos, missing
