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

import warnings
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

    Exactly n, unlike the released code's ``kthvalue`` + ``>=`` (which keeps every entry tied with
    the n-th): every entry above the n-th largest value, then as many of those equal to it as are
    missing, lowest index first, which is what a stable descending sort would keep, without sorting
    the m·n entries (a 4096 × 14336 matrix: seconds).
    """
    flat = score.flatten()
    if n >= flat.numel():
        return torch.arange(flat.numel(), device=flat.device)[:n]
    if n <= 0:
        return torch.empty(0, dtype=torch.long, device=flat.device)
    threshold = torch.topk(flat, n, sorted=False).values.min()  # the n-th largest value
    above = (flat > threshold).nonzero().flatten()
    tied = (flat == threshold).nonzero().flatten()[: n - above.numel()]
    return torch.cat([above, tied]).sort().values


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
    sketch_power: int = 1,
    tau_scale: float = 3.0,
    tol: float = 1e-6,
    noise_margin: float = 1.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """GreBsmo: W ≈ L + S with rank(L) <= ``rank`` and S sparse; returns L, shape (m, n).

    The rank grows greedily from ``step`` (Zhou & Tao 2013), every round fitting L to W − S inside
    one sketch of W taken at the start (a randomized range finder, as ``torch.svd_lowrank`` draws
    it: Halko et al. 2011):

        Q ← orth(W·G), with ``sketch_power`` power iterations     Q: (m, rank + p), G Gaussian
        B ← Qᵀ·W                                                  B: (rank + p, n)
        per round, ``power`` alternations of
            L ← best rank-k part of Q·(B − Qᵀ·S)     (an SVD of the small matrix; Qᵀ·S from S's non-zeros)
            S ← soft(W − L, τ)                        τ = tau_scale · σ̂(W − L), σ̂ = 1.4826·MAD

    so the cost is about one randomized SVD of W at the target rank, plus one product of rank k
    (forming L) per alternation: the earlier form drew a new sketch of the residual for every
    ``step`` directions and orthogonalised the full matrix twice per round, 3.2-3.6× a randomized SVD.
    S absorbs the outliers before L is fitted at a rank where it would take them: the sketch holds
    their directions (they are part of W), but L = the best rank-k part of what S leaves.

    Choices that differ from the 2013 code, and why:
    - τ is relative to the residual's robust scale, so the routine works on weights of any size.
    - S restarts from 0 each round (as the released DSEE code does): at too low a rank S would
      otherwise swallow the unexplained low-rank signal and keep it there.
    - Rank stops growing when what L misses is no bigger, in spectral norm, than ``noise_margin``
      times a noise matrix of the residual's scale (Marchenko-Pastur edge σ̂(√m + √n)): more rank
      would fit only noise and, worse, the very outliers S is meant to hold. When it grows, it
      grows to the number of singular values of Qᵀ(W − S) above that edge (at least ``step`` more):
      one round instead of one per ``step``.
    """
    m, n = weight.shape
    rank = max(1, min(rank, m, n))
    norm = weight.norm()
    edge = noise_margin * (m**0.5 + n**0.5)  # × σ̂: the spectral norm of noise of that scale
    basis = range_finder(weight, min(rank + oversample, m, n), sketch_power, generator)  # (m, K)
    projected = basis.T @ weight  # (K, n)
    k = min(step, rank)
    while True:
        sparse = None  # S restarts from 0 every round
        for _ in range(power):
            inside = projected if sparse is None else projected - project_sparse(basis, sparse)  # Qᵀ(W − S)
            spectrum, top = leading_directions(inside, k)  # (K,), (K, k): top-k left singular vectors
            # W − L in one product, L = Q·U_k·U_kᵀ·Qᵀ(W − S): (m, n), rank k
            residual = torch.addmm(weight, basis @ top, top.T @ inside, alpha=-1)
            sigma = robust_scale(residual)
            tau = float(tau_scale * sigma)
            unexplained = residual.clamp(-tau, tau)  # what soft-thresholding leaves: residual − S
            sparse = residual.sub_(unexplained)  # S = soft(W − L, τ), in the residual's memory
        done = k >= rank or unexplained.norm() < tol * norm
        # the last fit's spectrum of Qᵀ(W − S) (S of the alternation before): how many directions stand out
        above = int((spectrum > edge * sigma).sum())
        if done or (above <= k and spectral_norm(unexplained, generator) <= edge * sigma):
            return weight - sparse - unexplained  # L
        k = min(rank, max(k + step, above))


def leading_directions(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(all singular values, descending; the k leading left singular vectors) of a wide (K, n)
    ``matrix``, K ≤ n: (K,), (K, k).

    From the eigendecomposition of its (K, K) Gram matrix: 2·K²·n operations where an SVD of the wide
    matrix costs several times that; only the vectors' span is used (L = Q·U_k·U_kᵀ·Qᵀ(W − S)), never
    a division by a singular value, so squaring the condition number does not matter.
    """
    values, vectors = torch.linalg.eigh(matrix @ matrix.T)  # ascending
    return values.flip(0).clamp_min(0).sqrt(), vectors[:, -k:].flip(1)


def range_finder(matrix: torch.Tensor, width: int, power: int, generator: torch.Generator | None) -> torch.Tensor:
    """An orthonormal (m, width) basis Q of the range of ``matrix`` (Halko et al. 2011, algorithm 4.4):
    Q = orth(M·G) for a Gaussian G, refined by ``power`` subspace iterations Q ← orth(M·orth(Mᵀ·Q))."""
    sketch = torch.randn(matrix.shape[1], width, generator=generator, device=matrix.device)  # (n, width)
    basis = torch.linalg.qr(matrix @ sketch).Q
    for _ in range(power):
        basis = torch.linalg.qr(matrix @ torch.linalg.qr(matrix.T @ basis).Q).Q
    return basis


def project_sparse(basis: torch.Tensor, sparse: torch.Tensor, dense_share: float = 1 / 24) -> torch.Tensor:
    """Qᵀ·S for a mostly-zero (m, n) S: (K, n). As a sparse product (Sᵀ in CSR times Q: nnz·K operations)
    while S has fewer than ``dense_share`` of its entries non-zero, else as the dense product (measured on
    4096 × 4096 with K = 520, one core: 0.11 s sparse and 0.48 s dense at 60k non-zeros, even at 720k)."""
    m, n = sparse.shape
    if int(torch.count_nonzero(sparse)) >= dense_share * m * n:
        return basis.T @ sparse
    rows, cols = sparse.nonzero(as_tuple=True)
    order = torch.argsort(cols, stable=True)  # Sᵀ row by row
    crow = torch.zeros(n + 1, dtype=torch.long, device=sparse.device)
    crow[1:] = torch.bincount(cols, minlength=n).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        transposed = torch.sparse_csr_tensor(crow, rows[order], sparse[rows, cols][order], (n, m))
        return (transposed @ basis).T


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
