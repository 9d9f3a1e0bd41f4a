"""Choosing Ω, the support of the sparse update S (paper §3.1).

    W0 (m × n)  ≈  L (rank k)  +  S' (sparse)          Ω = the N positions of largest |S'|

The intuition: the entries a low-rank model of W0 explains worst are where a sparse correction is
worth spending parameters. Ways to choose Ω, each registered by name in ``SUPPORT_METHODS``:

- ``grebsmo``: GreBsmo (Zhou & Tao, 2013), a greedy bilateral-sketch robust PCA. L = X·Y is fit by
  subspace (power) iterations with QR; S' is the soft-thresholded residual; the rank grows by a
  few directions per round, sketched from the residual, until the target rank or a tolerance.
- ``upstream``: the released DSEE code's variant (100 rounds, S reset each round, hard threshold at
  an absolute 0.01, rank 1, 6, 11, ... 496), but always exactly N positions.
- ``magnitude``: the N largest |W0|.
- ``random``: N positions uniformly at random.
- ``gradient`` (needs data): the N largest Σ_k (∂L_k/∂W0)² over K training batches, a diagonal
  Fisher estimate; RoSA's choice (Nikdan et al. 2024). The statistic comes from
  ``calibration.squared_gradients``; here it is only ranked.

A method is a function ``(weight, generator, statistics, **options) -> scores`` (m, n), higher
chosen first; ``compute_support`` keeps the N highest (ties: the lower index). Adding one is a
function with ``@register_support_method``. Everything here is pure tensor code: deterministic
given the seed, on the weight's device.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..registry import Entry, Registry


SUPPORT_METHODS = Registry("sparse_method")
# ``fn(weight (m, n) float32, generator, statistics, **options) -> (m, n) scores``, the N highest kept;
# ``needs``: the statistics from data a method reads (e.g. ("grad_sq",))
register_support_method = SUPPORT_METHODS.register


def support_method(name: str) -> Entry:
    return SUPPORT_METHODS.get(name)


def compute_support(
    weight: torch.Tensor,
    num_sparse: int,
    method: str = "grebsmo",
    seed: int = 0,
    *,
    statistics: Mapping[str, torch.Tensor] | None = None,
    allowed: torch.Tensor | None = None,
    **options,
) -> torch.Tensor:
    """Return exactly ``num_sparse`` distinct flat (row-major) indices into ``weight``, ascending.

    Args:
        weight: W0, shape (m, n), any float dtype, any device; not modified.
        num_sparse: N, 0 <= N <= m·n.
        method: a name registered in ``SUPPORT_METHODS`` (see the module docstring).
        seed: seeds the random sketches (grebsmo, upstream) and the random support.
        statistics: what a data-aware method reads, each (m, n): ``grad_sq`` for "gradient".
        allowed: an optional bool (m, n) mask: Ω is chosen among its True positions only (the
            non-zeros of a pruned W0, whose other entries a prune mask zeroes anyway).
        options: method options, e.g. ``rank`` (GreBsmo's target rank; default ``default_rank``).

    Returns:
        LongTensor of shape (N,) on ``weight``'s device.
    """
    chosen = support_method(method)
    if weight.dim() != 2:
        raise ValueError(f"compute_support needs a 2-D weight, got shape {tuple(weight.shape)}")
    numel = weight.numel()
    if isinstance(num_sparse, bool) or not isinstance(num_sparse, int) or not 0 <= num_sparse <= numel:
        raise ValueError(
            f"num_sparse={num_sparse!r} must be an integer in [0, {numel}] for a weight of shape {tuple(weight.shape)}"
        )
    if num_sparse == 0:
        return torch.empty(0, dtype=torch.long, device=weight.device)
    statistics = dict(statistics or {})
    missing = [name for name in chosen.needs if name not in statistics]
    if missing:
        raise ValueError(f"sparse_method {method!r} chooses Ω from data and needs {missing}: "
                         "pass training batches (add_dsee(model, config, batches=...))")
    for name in chosen.needs:
        if tuple(statistics[name].shape) != tuple(weight.shape):
            raise ValueError(f"statistic {name!r} has shape {tuple(statistics[name].shape)}, "
                             f"the weight {tuple(weight.shape)}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError("compute_support: the weight holds NaN or infinite values")
    generator = torch.Generator(device=w.device).manual_seed(seed)
    score = chosen.fn(w, generator, statistics, **options)  # (m, n): higher is chosen first
    if allowed is not None:
        allowed = allowed.to(w.device).reshape(w.shape)
        if num_sparse > int(allowed.sum()):
            raise ValueError(f"num_sparse={num_sparse} exceeds the {int(allowed.sum())} positions allowed")
        score = torch.where(allowed, score, torch.tensor(-float("inf"), device=w.device))
    return top_n_indices(score, num_sparse)


# |W0 - L| orders entries exactly as |S'| does wherever S' is non-zero (both thresholds are
# monotone in |W0 - L|), and still ranks the rest when fewer than N entries survive.
@register_support_method("grebsmo")
def _grebsmo_support(w, generator, statistics, rank: int | None = None):
    """W0 ≈ L + S' by GreBsmo, the N largest |S'| (paper §3.1; the default)."""
    return (w - grebsmo(w, rank or default_rank(w.shape), generator=generator)).abs()


@register_support_method("upstream")
def _upstream_support(w, generator, statistics):
    """The released code's decomposition (100 rounds, hard threshold 0.01), exactly N positions."""
    return (w - upstream_low_rank(w, generator=generator)).abs()


@register_support_method("magnitude")
def _magnitude_support(w, generator, statistics):
    """The N largest |W0| (a paper ablation)."""
    return w.abs()


@register_support_method("random")
def _random_support(w, generator, statistics):
    """N positions uniformly at random (a paper ablation): the first N of a seeded permutation."""
    order = torch.randperm(w.numel(), generator=generator, device=w.device)
    score = torch.empty(w.numel(), device=w.device)
    score[order] = torch.arange(w.numel(), 0, -1, device=w.device, dtype=score.dtype)
    return score.view(w.shape)


@register_support_method("gradient", needs=("grad_sq",))
def _gradient_support(w, generator, statistics):
    """The N largest summed squared gradients of the training loss w.r.t. W0 (RoSA; needs data)."""
    grad_sq = statistics["grad_sq"].to(w.device).float()
    if not torch.isfinite(grad_sq).all():
        raise ValueError("sparse_method 'gradient': the squared gradients hold NaN or infinite values "
                         "(a diverged loss on the support batches?)")
    return grad_sq


def top_n_indices(score: torch.Tensor, n: int) -> torch.Tensor:
    """Flat indices of the n largest entries of ``score``, ascending; ties go to the lower index.

    A stable sort rather than ``kthvalue`` + ``>=``: the released code's threshold test keeps more
    than N entries when values tie.
    """
    order = torch.sort(score.flatten(), descending=True, stable=True).indices
    return order[:n].sort().values


def default_rank(shape: torch.Size | tuple[int, int]) -> int:
    """The default GreBsmo target rank: 1/8 of the smaller side (96 for a 768 × 768 matrix)."""
    return max(1, min(shape) // 8)


def soft_threshold(x: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - tau, min=0)


def robust_scale(x: torch.Tensor) -> torch.Tensor:
    """σ estimated from the median absolute deviation (1.4826·MAD): blind to sparse outliers."""
    flat = x.flatten()
    if flat.numel() > 1 << 18:  # the median of a 256k-entry sample is accurate to well under 1%
        step = flat.numel() // (1 << 18) + 1
        flat = flat[::step]
    return 1.4826 * (flat - flat.median()).abs().median()


def grebsmo(
    weight: torch.Tensor,
    rank: int,
    *,
    step: int = 16,
    oversample: int = 8,
    power: int = 2,
    tau_scale: float = 3.0,
    tol: float = 1e-6,
    noise_margin: float = 1.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """GreBsmo: W ≈ L + S with rank(L) <= ``rank`` and S sparse; returns L, shape (m, n).

    The rank grows greedily by ``step`` per round, the new directions sketched from the residual
    (Zhou & Tao 2013). Within a round, ``power`` alternations of

        Q ← orth((W − S)·Yᵀ)        Q: (m, k + p)    bilateral sketch, warm-started by Y
        Y ← Qᵀ·(W − S)              Y: (k + p, n)
        L ← best rank-k part of Q·Y  (SVD of the small Y)
        S ← soft(W − L, τ)          τ = tau_scale · σ̂(W − L), σ̂ = 1.4826·MAD

    Choices that differ from the 2013 code, and why:
    - τ is relative to the residual's robust scale, so the routine works on weights of any size.
    - p = ``oversample`` extra sketch directions: the subspace converges in one or two iterations
      instead of dozens.
    - S restarts from 0 each round (as the released DSEE code does): at too low a rank S would
      otherwise swallow the unexplained low-rank signal and keep it there.
    - Rank stops growing when what L misses is no bigger, in spectral norm, than ``noise_margin``
      times a noise matrix of the residual's scale (Marchenko-Pastur edge σ̂(√m + √n)): more rank
      would fit only noise and, worse, the very outliers S is meant to hold.
    """
    m, n = weight.shape
    rank = max(1, min(rank, m, n))
    norm = weight.norm()
    k = min(step, rank)
    y = torch.randn(min(k + oversample, m, n), n, generator=generator, device=weight.device)  # (k+p, n)
    while True:
        sparse = torch.zeros_like(weight)
        for _ in range(power):
            target = weight - sparse  # (m, n): what the low-rank part must explain
            q = torch.linalg.qr(target @ y.T).Q  # (m, k+p)
            y = q.T @ target  # (k+p, n)
            u, s, vh = torch.linalg.svd(y, full_matrices=False)
            low_rank = (q @ u[:, :k]) * s[:k] @ vh[:k]  # (m, n), rank k
            residual = weight - low_rank
            sigma = robust_scale(residual)
            sparse = soft_threshold(residual, tau_scale * sigma)
        unexplained = residual - sparse  # (m, n)
        if k >= rank or unexplained.norm() < tol * norm:
            return low_rank
        if spectral_norm(unexplained, generator) <= noise_margin * sigma * (m**0.5 + n**0.5):
            return low_rank
        grow = min(step, rank - k, min(m, n) - y.shape[0])
        k += min(step, rank - k)
        if grow > 0:
            sketch = torch.randn(grow, m, generator=generator, device=weight.device)
            y = torch.cat([y, sketch @ residual])  # new row directions from what L misses


def spectral_norm(matrix: torch.Tensor, generator: torch.Generator | None, iterations: int = 8) -> torch.Tensor:
    """‖M‖₂ by power iteration on MᵀM (a slight underestimate; cheap: matrix-vector products only)."""
    v = torch.randn(matrix.shape[1], 1, generator=generator, device=matrix.device)
    for _ in range(iterations):
        v = matrix.T @ (matrix @ v)
        v = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
    return (matrix @ v).norm()


def upstream_low_rank(
    weight: torch.Tensor,
    *,
    rounds: int = 100,
    inner: int = 2,
    rank_step: int = 5,
    threshold: float = 0.01,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The released DSEE code's decomposition, as described in the method notes; returns L.

    ``rounds`` outer rounds with rank 1, 1 + rank_step, ...; S starts at 0 every round; ``inner``
    alternations of a rank-k fit of W − S and a *hard* threshold of W − L at an absolute
    ``threshold``. Kept for comparison: on weights whose entries are mostly below 0.01 it
    degenerates (S is almost empty), which is why "grebsmo" is the default.
    """
    m, n = weight.shape
    max_rank = min(m, n)
    y = torch.randn(1, n, generator=generator, device=weight.device)
    low_rank = torch.zeros_like(weight)
    for round_index in range(rounds):
        k = min(1 + rank_step * round_index, max_rank)
        if y.shape[0] < k:
            extra = torch.randn(k - y.shape[0], m, generator=generator, device=weight.device)
            y = torch.cat([y, extra @ (weight - low_rank)])
        sparse = torch.zeros_like(weight)
        for _ in range(inner):
            target = weight - sparse
            x = torch.linalg.qr(target @ y.T).Q
            y = x.T @ target
            low_rank = x @ y
            residual = weight - low_rank
            sparse = residual * (residual.abs() > threshold)
    return low_rank


# the methods that read only the weight (``compute_support(weight, N, method)`` needs nothing else)
METHODS = tuple(name for name in SUPPORT_METHODS if not SUPPORT_METHODS.get(name).needs_data)
