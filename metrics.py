"""Analysis measures of self-supervised representations: redundancy, spectra, information, geometry.

Pure tensor functions. Features are (n, d) matrices (n samples, d features) unless a docstring says
otherwise; each docstring gives the formula and where it comes from, citing the papers by these names:
    SSLPM paper       "Beyond Pairwise Correlations: Higher-Order Redundancies in SSL Representation Learning"
    Collapses paper   "Preventing Collapses in Non-Contrastive Self-Supervised Learning" (Echchahed &
                      El Massaudi)
    CorInfoMax thesis "Self-Supervised Learning with an Information Maximization Criterion" (Ozsoy 2022;
                      paper: arXiv 2209.07999)
    AdaDim paper      "AdaDim: Dimensionality Adaptation for SSL Representational Dynamics"
    Geometry paper    "Toward a Geometrical Understanding of Self-supervised Contrastive Learning" (Cosentino
                      et al. 2022, arXiv 2205.06926)
Wherever an identity allows it the work is done on d x d matrices instead of n x n ones, and in the precise
dtype of the features' device (common.precise_dtype: float64) where log-determinants and eigenvalues need
it. Scalar measures return Python floats. Deviation on MPS (no float64): a function given MPS tensors
computes in float32 (spectra then floor near 1e-7 of their largest value); report() and track() move the
features to the CPU there, so their values are those of a CPU.

Also here: report() (every scalar measure in one dict), track() (the few measures each method logs
every --track-every epochs) and a command line:
    python metrics.py runs/<run>/last.pt            one table, also written to runs/<run>/metrics-last.json
    python metrics.py --compare runs/a/last.pt runs/b/last.pt
"""
import argparse
import importlib
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import common

ROOT = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------ correlation and redundancy (SSLPM paper)
def zscore(x):
    """z-score every feature over the samples: mean 0, variance 1 (SSLPM paper section 3.2, appendix A).
    Population variance (divide by n), so that C = X^T X / n is the correlation matrix. A constant
    feature (varying_features) becomes 0 instead of NaN. Returns the precise dtype (float64)."""
    x = _precise(x) - _precise(x).mean(0)
    std = x.pow(2).mean(0).sqrt()
    return torch.where(varying_features(x), x / std.clamp_min(_tiny(x)), torch.zeros_like(x))


def _precise(x):  # x in its device's precise dtype: float64 (float32 where the device has none)
    return x.to(common.precise_dtype(x.device))


def _tiny(x):  # the smallest positive normal number of x's dtype: a floor for divisions and logs
    return torch.finfo(x.dtype).tiny


def varying_features(x):
    """(d,) bool: the features (columns) that vary over the samples, by more than float rounding: a
    spread of at most 1e-6 of the column's largest magnitude counts as constant (float32 keeps 7 digits)."""
    x = _precise(x)
    if len(x) == 0:
        return x.new_zeros(x.shape[1], dtype=torch.bool)
    spread = (x - x.mean(0)).pow(2).mean(0).sqrt()
    return spread > 1e-6 * x.abs().amax(0).clamp_min(_tiny(x))


def gram(x):
    return x.T @ x / len(x)                                   # (d, d) second moments, float64 for x float64


def correlation_matrix(x):
    return gram(zscore(x))                   # (d, d), ones on the diagonal (0 for a constant feature)


def _varying_correlations(x):
    """The correlation matrix of the features that vary; a correlation needs at least 2 of them."""
    keep = varying_features(x)
    if len(x) < 2 or int(keep.sum()) < 2:
        raise ValueError(f"{int(keep.sum())} of the {x.shape[1]} features vary over the {len(x)} samples: a "
                         "correlation needs two that vary (all constant: a total collapse)")
    return correlation_matrix(x[:, keep])


def average_absolute_correlation(x):
    """AAC, SSLPM paper definition 3.1 (eq. 2): AAC_j = sum_{i != j} |C_ij| / (d - 1), AAC = mean_j AAC_j,
    i.e. the mean of |C_ij| over all i != j of the correlation matrix of the standardised features (the
    paper's "covariance" of standardised features is this correlation). Constant features, which cannot
    be standardised, are left out; raises ValueError when fewer than 2 features vary."""
    c = _varying_correlations(x)
    d = len(c)
    return ((c.abs().sum() - c.diagonal().abs().sum()) / (d * (d - 1))).item()


def average_correlation(x):
    """The Collapses paper section 4 (Figure 11, "the off-diagonal mean of the correlation matrix"): the
    signed mean of the off-diagonal correlations of the features. Unlike AAC, positive and negative
    correlations cancel, and the mean is at least -1/(d - 1): a rank-1 collapse with features of both
    signs reads near 0, so read it next to AAC. Constant features are left out as in AAC."""
    c = _varying_correlations(x)
    d = len(c)
    return ((c.sum() - c.diagonal().sum()) / (d * (d - 1))).item()


def _split(x, fraction, test_fraction, val_fraction, seed):
    """Samples: train / test (SSLPM paper appendix A: fit on 80%, evaluate on 20%), and train again into
    fit / val for choosing the ridge penalty. Features: a random `fraction` of the features that vary as
    targets (a constant feature has nothing to predict). Seeded, so LR and NLR with the same seed and
    fraction use the same split and targets."""
    n, d = x.shape
    varying = varying_features(x).nonzero()[:, 0]
    if n < 5 or len(varying) == 0:
        raise ValueError(f"{n} samples, {len(varying)} of {d} features varying: a held-out redundancy needs "
                         "at least 5 samples and one feature that varies")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).to(x.device)  # drawn on the CPU: the same split on every device
    n_test = max(1, round(test_fraction * n))
    test, train = perm[:n_test], perm[n_test:]
    n_val = max(1, round(val_fraction * len(train)))
    val, fit = train[:n_val], train[n_val:]
    k = max(1, round(fraction * len(varying)))
    targets = varying[torch.randperm(len(varying), generator=g)[:k]].sort().values
    return train, test, fit, val, targets


# _heldout_note: the SSLPM paper writes 1 - MSE because standardised features have unit variance. On a finite
# test split the target's variance is not exactly 1 (for heavy-tailed features it can be off by 10-20%
# at n = 1000), and 1 - MSE would report that sampling noise as redundancy. We divide the MSE by the
# MSE of the trivial predictor 0 (the mean) on the same split, E[x_j^2] = 1 in expectation: the
# held-out R^2, the same quantity with the split's noise cancelled.


def ridge_heldout_mse(gram_fit, gram_eval, ridges):
    """Held-out MSE of the ridge regression of EVERY feature j on all the others, for every ridge value
    lam: (len(ridges), d), from the Gram matrices X^T X / n of the fitting and the evaluation samples.
    The loss is |X_-j b - x_j|^2 / n + lam |b|^2 (no intercept: the features are centred). One d x d
    Cholesky per ridge value serves all d targets:

    Let G = X^T X / n + lam I be the Gram matrix of ALL features (the target's own column included) and
    P = G^-1. Block inversion of G over the index sets (-j, j), with A = G[-j,-j], c = G[-j,j] and the
    Schur complement s = G[j,j] - c^T A^-1 c, gives
        P[-j, j] = -A^-1 c / s,      P[j, j] = 1 / s,
    and the ridge coefficients of target j are b_j = A^-1 c = (X_-j^T X_-j / n + lam I)^-1 X_-j^T x_j / n:
        b_j = -P[-j, j] / P[j, j].
    G also carries lam on the target's own diagonal entry G[j, j]; that entry appears only in s, which
    cancels in the ratio, so b_j is exactly the ridge fit of x_j on the others (tested against
    per-target solves). The residual x_j - X_-j b_j = X e_j + X_-j P[-j, j] / P[j, j] = X p_j / P[j, j]
    (p_j column j of P), so its mean square over the evaluation samples is p_j^T G_eval p_j / P[j, j]^2:
    all d targets cost O(d^3) per ridge value, whatever the number of samples."""
    eye = torch.eye(len(gram_fit), dtype=gram_fit.dtype, device=gram_fit.device)
    out = []
    for lam in ridges:
        p = torch.cholesky_inverse(torch.linalg.cholesky(gram_fit + lam * eye))  # (d, d) = G^-1
        out.append((p * (gram_eval @ p)).sum(0) / p.diagonal() ** 2)             # (d,) p_j^T G p_j / P_jj^2
    return torch.stack(out)                                                       # (len(ridges), d)


def linear_redundancy(x, fraction=1.0, ridges=(1e-4, 1e-3, 1e-2, 1e-1, 1.0), test_fraction=0.2,
                      val_fraction=0.2, seed=0):
    """Linear redundancy, SSLPM paper eq. 4: LR_j = 1 - MSE of the best linear prediction of standardised
    feature j from all the others (the MSE relative to predicting 0, see _heldout_note: an estimator of
    the same quantity), LR = mean_j LR_j over a random `fraction` of the features that vary (the paper:
    20%; all by default, as it costs the same here).
    As in appendix A the regression is fitted on 80% of the samples and its MSE measured on the other
    20%; the ridge penalty (section 3.2: "chosen through cross-validation") is chosen per target on a
    validation part of the fitting samples, then refit on all of them. Everything comes from three
    Gram matrices (one pass over the data, O(n d^2)) and 2 * len(ridges) d x d factorisations
    (ridge_heldout_mse). Returns (LR, per_feature): per_feature (d,) is NaN where j was not a target."""
    x = zscore(x)
    train, test, fit, val, targets = _split(x, fraction, test_fraction, val_fraction, seed)
    g_fit, g_val, g_test = gram(x[fit]), gram(x[val]), gram(x[test])
    g_train = (len(fit) * g_fit + len(val) * g_val) / len(train)                # train = fit + val
    best = ridge_heldout_mse(g_fit, g_val, ridges).argmin(0)                    # (d,) best penalty per target
    mse = ridge_heldout_mse(g_train, g_test, ridges).gather(0, best[None])[0]   # (d,)
    per_feature = torch.full_like(mse, float("nan"))
    per_feature[targets] = 1 - (mse / g_test.diagonal())[targets]               # see _heldout_note
    return _mean_over_targets(per_feature, targets), per_feature


def _mean_over_targets(per_feature, targets):
    """Mean over the targets; a target constant on the test split (0 / 0) is left out of it."""
    values = per_feature[targets]
    values = values[values.isfinite()]
    if len(values) == 0:
        raise ValueError("every target feature is constant on the test split: nothing to score")
    return values.mean().item()


def nonlinear_redundancy(x, fraction=0.2, hidden=(128, 64), steps=1000, batch_size=256, lr=1e-3,
                         test_fraction=0.2, seed=0, progress=False):
    """Non-linear redundancy, SSLPM paper eq. 5: NLR_j = 1 - held-out MSE of an MLP (d-1 -> 128 -> 64 -> 1,
    ReLU) predicting standardised feature j from all the others (relative MSE, see _heldout_note),
    NLR = mean_j NLR_j over a random `fraction` of the features (appendix A: 20%, MLP 128-64, a fixed
    number of training steps, fit on 80% of the samples, evaluated on 20%). The same seed gives the same
    sample split as linear_redundancy, and the same targets for the same fraction. Adam, cosine
    learning-rate decay, minibatches of `batch_size`; the paper gives no optimiser settings.

    The k target networks train together as ONE batched network. Their first layers are one (d, k*128)
    matrix, so the first layer of all of them is a single large matmul; the other layers are batched
    matmuls over stacks of k weight tensors. Network j never sees feature j: row j of its first-layer
    weight is held at zero, which is the same as deleting feature j from its input. Parameters are not
    shared and Adam is elementwise, so one optimizer on the summed loss trains k independent networks.
    Returns (NLR, per_feature), per_feature (d,) NaN where j was not a target."""
    g = torch.Generator().manual_seed(seed)
    x = zscore(x).float()
    n, d = x.shape
    train, test, _, _, targets = _split(x, fraction, test_fraction, 0.2, seed)
    k, (h1, h2), device = len(targets), hidden, x.device

    def init(fan_in, *shape):  # nn.Linear's default initialisation U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        return ((2 * torch.rand(*shape, generator=g) - 1) / math.sqrt(fan_in)).to(device).requires_grad_()
    w1, b1 = init(d - 1, d, k, h1), init(d - 1, k, h1)            # first layers of all k networks
    w2, b2 = init(h1, k, h1, h2), init(h1, k, 1, h2)
    w3, b3 = init(h2, k, h2, 1), init(h2, k, 1, 1)
    own = (targets.to(device), torch.arange(k, device=device))    # w1[targets[j], j]: feature j into net j

    def predict(xb):                                               # (B, d) -> (k, B)
        h = F.relu(xb @ w1.reshape(d, k * h1) + b1.reshape(k * h1))  # (B, k*h1): one matmul for all nets
        h = h.reshape(len(xb), k, h1).transpose(0, 1)                # (k, B, h1)
        h = F.relu(torch.baddbmm(b2, h, w2))                         # (k, B, h2)
        return torch.baddbmm(b3, h, w3)[..., 0]                      # (k, B)

    # fused: one pass over the k * d * 128 first-layer weights per step (the default CPU Adam makes ~10)
    optimizer = torch.optim.Adam([w1, b1, w2, b2, w3, b3], lr=lr, fused=device.type in ("cpu", "cuda"))
    x_train, x_test, cols = x[train.to(device)], x[test.to(device)], targets.to(device)
    for step in tqdm(range(steps), desc="NLR", leave=False, disable=None if progress else True):
        with torch.no_grad():
            w1[own] = 0                                            # mask: net j gets no input from feature j
        xb = x_train[torch.randint(len(x_train), (batch_size,), generator=g).to(device)]  # (B, d)
        loss = (predict(xb) - xb[:, cols].T).pow(2).mean(1).sum()  # sum over nets of each net's MSE
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        w1[own] = 0
        sq = sum((predict(c) - c[:, cols].T).pow(2).sum(1) for c in x_test.split(4096))  # (k,)
    per_feature = torch.full((d,), float("nan"), dtype=common.precise_dtype(device), device=device)
    per_feature[targets] = 1 - _precise(sq) / _precise(x_test[:, cols]).pow(2).sum(0)  # _heldout_note
    return _mean_over_targets(per_feature, targets), per_feature


# ------------------------------------------------------ spectra (Collapses, AdaDim, Geometry papers)
def singular_values(x, center=False):
    """The min(n, d) singular values of x (n, d), descending, float64: of the matrix as it is by default
    (an embedding matrix for the effective rank and RankMe, a weight for Rank_tau, the raw features of
    the Geometry paper's Figure 4), or of the centred features (center=True; their squares / (n - 1) are
    the covariance eigenvalues). By an SVD in float64: accurate far below 1e-8 of the largest value, so
    the tail of a log spectrum is real, not rounding."""
    x = _precise(x)
    if center:
        x = x - x.mean(0)
    return torch.linalg.svdvals(x)


def _float(x):  # float64 stays float64 (exact tests); anything else is computed in float32
    return x if x.dtype == torch.float64 else x.float()


def _entropy(p):  # Shannon entropy (nats) of a probability vector, 0 log 0 = 0
    return -(p * p.clamp_min(_tiny(p)).log()).sum().item()


def effective_rank(x):
    """Effective rank (Roy & Vetterli 2007) of the matrix as it is, not centred: exp(H(p)), p = s / |s|_1
    the L1-normalised singular values, H in nats. This is the AdaDim paper's H(R) (section 1, appendix
    A.6, get_rank(Z) in its pseudocode) and RankMe without its eps. Between 1 and min(n, d); k for k equal
    non-zero singular values; 1 for a rank-1 matrix, so a total collapse (every row the same) reads 1.
    The zero matrix has no non-zero singular value: it reads 0, as its rank (the entropy is undefined)."""
    return _spectral_rank(x)


def _spectral_rank(x, center=False, eps=0.0):  # exp(entropy of s / |s|_1 + eps), s: singular values; 0: s = 0
    s = singular_values(x, center)
    return 0.0 if s.sum() == 0 else math.exp(_entropy(s / s.sum() + eps))


def effective_rank_centered(x):
    """Roy & Vetterli's effective rank of the centred features (x - mean), i.e. of the principal-component
    scales: how many directions the samples spread along around their mean. Not the AdaDim paper's H(R)
    (effective_rank, uncentred): it ignores the mean, so a collapse to one point plus a little noise reads
    as high as the noise's spread. 0 when every row is the same."""
    return _spectral_rank(x, center=True)


def rankme(x, eps=1e-7):
    """RankMe (Garrido et al. 2023): exp(-sum_k p_k log p_k), p_k = s_k / |s|_1 + eps, s the singular values
    of the embedding matrix as it is (not centred, as in that paper). Equal to effective_rank up to the
    eps (at most a few thousandths); 0 for the zero matrix."""
    return _spectral_rank(x, eps=eps)


def numerical_rank(matrix, tau=1e-2):
    """Rank_tau(W) = sum_j 1{|sigma_j| >= tau} (Geometry paper eq. 2): the number of singular values of the
    matrix (not centred) at or above the ABSOLUTE threshold tau. The paper applies it to the 512 x 128
    linear projector (Figure 1) and does not state tau; 1e-2 here. An absolute threshold depends on the
    scale of W, which matters when the projector's output is normalised afterwards."""
    return int((singular_values(matrix) >= tau).sum())


def covariance_eigenvalues(x):
    """The d eigenvalues of the sample covariance of x (n, d) (divided by n - 1), descending, float64:
    the spectrum the Collapses paper plots in log scale (Figure 8, "singular value spectrum of the
    covariance matrix" of the embeddings; a PSD matrix's singular values are its eigenvalues). Zeros
    beyond rank n - 1. Raises ValueError for fewer than 2 samples."""
    n, d = x.shape
    if n < 2:
        raise ValueError(f"{n} sample: a covariance needs at least 2")
    lam = singular_values(x, center=True).pow(2) / (n - 1)
    return torch.cat([lam, lam.new_zeros(d - len(lam))])


def eigenvalue_count(x, tau=0.01):
    """The AdaDim paper A.9 (Figure 3b): the number of covariance eigenvalues above tau once all of them
    are divided by their sum ("normalized ... by the l-1 norm"); the paper says eigenvalues, and its
    companion measure is PCA's explained variance, so these are covariance eigenvalues. At most 1 / tau:
    a perfectly even spectrum of more than 1 / tau dimensions counts 0. Features without any variance
    (a collapse to one point) count 0."""
    lam = covariance_eigenvalues(x)
    if lam.sum() == 0:
        return 0
    return int((lam / lam.sum() > tau).sum())


def explained_variance_ratio(x, top=0.3):
    """The AdaDim paper A.9 (Figure 3c): sum_{i <= p N} lam_i / sum_i lam_i, the share of the variance in
    the largest floor(top * N) (at least one) of the N = d covariance eigenvalues. 1 / (top N) ... 1:
    higher means fewer directions hold the variance. Raises ValueError when nothing varies."""
    lam = covariance_eigenvalues(x)
    if lam.sum() == 0:
        raise ValueError("no feature varies (a collapse to one point): no variance to explain")
    m = max(1, math.floor(top * len(lam) + 1e-9))
    return (lam[:m].sum() / lam.sum()).item()


def von_neumann_entropy(a):
    """H = -sum_i lam_i log lam_i (nats) over the eigenvalues of a PSD matrix scaled to trace 1 (AdaDim
    paper A.6, after its refs. 50 and 25). log(rank) for a flat spectrum, 0 for rank one. report() applies
    it to R^T R / tr of the L2-normalised rows, whose non-zero eigenvalues are those of the AdaDim
    paper's normalised Gram R R^T / n: this is the order-1 Renyi entropy of that matrix. Raises
    ValueError for a zero matrix."""
    lam = torch.linalg.eigvalsh(_precise(a)).clamp_min(0)
    if lam.sum() == 0:
        raise ValueError("a zero matrix has no spectrum to take the entropy of")
    return _entropy(lam / lam.sum())


def matrix_entropy(a):
    """Matrix entropy of a PSD matrix A (AdaDim paper A.6, after its ref. 58): ME(A) = -tr(A log A) + tr(A)
    = sum_i (-lam_i log lam_i + lam_i). Not normalised: the trace term grows with more and larger
    eigenvalues. 0 for a zero matrix. report() applies it to the covariance of the L2-normalised rows."""
    lam = torch.linalg.eigvalsh(_precise(a)).clamp_min(0)
    return _entropy(lam) + lam.sum().item()


# ------------------------------------- information (Collapses paper, CorInfoMax thesis, AdaDim paper)
def renyi_entropy(gram, alpha=2):
    """Matrix-based Renyi entropy of order alpha of a PSD (n, n) Gram matrix (AdaDim paper A.6):
    K = gram / tr(gram), H_alpha = log(tr(K^alpha)) / (1 - alpha) = log(sum_i lam_i^alpha) / (1 - alpha);
    alpha = 2: -log |K|_F^2 (no eigenvalues needed); alpha = 1: the von Neumann limit.
    log n for n orthogonal equal-norm rows, 0 for rank one. Raises ValueError for a zero matrix."""
    gram = _precise(gram)
    trace = gram.diagonal().sum()
    if trace <= 0:
        raise ValueError("a zero Gram matrix (every row zero) has no entropy")
    k = gram / trace
    if alpha == 2:
        return -math.log(k.pow(2).sum().item())
    lam = torch.linalg.eigvalsh(k).clamp_min(0)
    if alpha == 1:
        return _entropy(lam)
    return math.log(lam.pow(alpha).sum().item()) / (1 - alpha)


def renyi2_entropy(x):
    """Order-2 Renyi entropy of the Gram matrix of the rows of x (n, d) without forming it:
    K = X X^T / tr(X X^T), H_2 = -log tr(K^2) and tr((X X^T)^2) = |X^T X|_F^2, a d x d product.
    Raises ValueError when every row is zero."""
    x = _precise(x)
    if not x.any():
        raise ValueError("every row is zero: the Gram matrix has no entropy")
    return -math.log((x.T @ x).pow(2).sum().item() / x.pow(2).sum().item() ** 2)


def renyi_mutual_information(r, z, alpha=2, chunk=1024):
    """Renyi matrix mutual information I(R; Z) (AdaDim paper A.6, used by AdaDim): rows L2-normalised,
    A = R R^T / n and B = Z Z^T / n (trace 1),
        I(A; B) = H(A) + H(B) - H(A o B / tr(A o B)),   o the Hadamard product, H = renyi_entropy.
    Order 2 without n x n matrices in memory (so n = 10,000 is fine):
    - H(A) = -log tr(A^2) and tr((R R^T)^2) = |R^T R|_F^2: a d x d product, O(n d^2).
    - the joint term: (R R^T) o (Z Z^T) = P P^T with P_i = r_i (x) z_i (row-wise Kronecker, the
      Khatri-Rao product), whose rank can reach d_r * d_z, so it has no d x d form; instead
      tr(((R R^T) o (Z Z^T))^2) = sum_ij (r_i.r_j)^2 (z_i.z_j)^2 is summed over row blocks of the two
      Gram matrices: O(n^2 (d_r + d_z)) time, O(chunk * n) memory.
    Other orders use the explicit n x n matrices and their eigenvalues (O(n^3)). Natural log (nats).
    A zero row stays zero (it has no direction); raises ValueError if every row of R or of Z is zero, or
    if no sample has both a non-zero R and a non-zero Z row."""
    r, z = F.normalize(_precise(r), dim=1), F.normalize(_precise(z), dim=1)
    if not (r.any() and z.any() and (r.pow(2).sum(1) * z.pow(2).sum(1)).sum() > 0):
        raise ValueError("every row of R or of Z (or of their product) is zero: "
                         "no mutual information to measure")
    if alpha != 2:
        a, b = r @ r.T, z @ z.T
        return renyi_entropy(a, alpha) + renyi_entropy(b, alpha) - renyi_entropy(a * b, alpha)
    trace = (r.pow(2).sum(1) * z.pow(2).sum(1)).sum().item()     # tr(A o B) (= n with unit rows)
    rf, zf, sq = r.float(), z.float(), 0.0
    for i in range(0, len(r), chunk):                            # blocks of the two n x n Gram matrices
        sq += _precise((rf[i:i + chunk] @ rf.T) * (zf[i:i + chunk] @ zf.T)).pow(2).sum().item()
    return renyi2_entropy(r) + renyi2_entropy(z) + math.log(sq / trace ** 2)


def _logdet(m, what):
    """log det of a symmetric positive definite matrix; ValueError (naming `what`) when it is singular or
    not positive definite, where slogdet's log |det| would silently drop the sign."""
    sign, value = torch.linalg.slogdet(m)
    if sign <= 0 or not math.isfinite(value.item()):
        raise ValueError(f"{what} is singular (not positive definite): its log-determinant is -inf; "
                         "use eps > 0")
    return value.item()


def _covariance(x):
    if len(x) < 2:
        raise ValueError(f"{len(x)} sample: a covariance needs at least 2")
    return torch.cov(_precise(x).T).reshape(x.shape[1], x.shape[1])


def logdet_entropy(x, eps=1e-4):
    """Log-determinant (LD) entropy, CorInfoMax thesis eq. 3.3, in nats:
    H = 1/2 log det(R_x + eps I) + d/2 log(2 pi e), R_x the sample covariance (unbiased, divide by n - 1).
    With eps = 0 it is the differential entropy of a Gaussian with covariance R_x. The Collapses paper
    compares it with the pairwise-distance estimator as a collapse indicator: a total collapse reads
    d/2 log(2 pi e eps), very negative, not 0. Raises ValueError for fewer than 2 samples, or a singular
    R_x with eps = 0."""
    d = x.shape[1]
    cov = _covariance(x)
    cov = cov + eps * torch.eye(d, dtype=cov.dtype, device=cov.device)
    return 0.5 * _logdet(cov, "the covariance") + d / 2 * math.log(2 * math.pi * math.e)


def ld_mutual_information(x, y, eps=1e-4, symmetric=True):
    """LD mutual information (LDMI), CorInfoMax thesis eqs. 3.5-3.6, nats, sample covariances (n - 1):
        I(x; y) = 1/2 logdet(R_x + eps I) - 1/2 logdet(R_x - R_xy (R_y + eps I)^-1 R_xy^T + eps I)  (3.5)
    symmetric=True (default) returns eq. 3.6, the average of 3.5 and 3.5 with x and y exchanged. The
    thesis calls the two "equivalent": they are equal for eps = 0 (both are the Gaussian mutual
    information), not for eps > 0. >= 0, and 0 exactly when R_xy = 0 (thesis Lemma 1). Raises
    ValueError for fewer than 2 samples, or (eps = 0) when a covariance or the error covariance is
    singular: one view is then an exact linear function of the other, an infinite information."""
    dx = x.shape[1]
    c = _covariance(torch.cat([x, y], 1))
    rx, ry, rxy = c[:dx, :dx], c[dx:, dx:], c[:dx, dx:]

    def one_sided(ra, rb, rab):
        ea, eb = (eps * torch.eye(len(m), dtype=m.dtype, device=m.device) for m in (ra, rb))
        error = ra - rab @ torch.linalg.solve(rb + eb, rab.T)     # covariance of the linear-MMSE error
        return 0.5 * (_logdet(ra + ea, "a covariance") - _logdet(error + ea, "the error covariance"))
    if not symmetric:
        return one_sided(rx, ry, rxy)
    return 0.5 * (one_sided(rx, ry, rxy) + one_sided(ry, rx, rxy.T))


def gaussian_mutual_information(r, z, eps=0.0, both=False):
    """Closed-form I(R; Z) of jointly Gaussian R and Z with the sample covariance Sigma (+ eps I), paper
    eq. 1 of the AdaDim paper, nats:
        I = 1/2 (ln|S_Z| - ln|Var(Z|R)|) = 1/2 (ln|S_R| - ln|Var(R|Z)|),
        Var(Z|R) = S_Z - S_ZR S_R^-1 S_RZ,   Var(R|Z) = S_R - S_RZ S_Z^-1 S_ZR   (Schur complements).
    (The paper writes S_RZ S_R^-1 S_ZR in the first one; its dimensions only work as above.)
    Returns the first form, or both forms when both=True; they agree (they equal
    1/2 (ln|S_R| + ln|S_Z| - ln|S|)). With eps = 0 it needs n > d_r + d_z samples (else S is singular and
    the estimate meaningless): raises ValueError then, and whenever a determinant is not positive."""
    dz = z.shape[1]
    if eps == 0 and len(r) <= r.shape[1] + dz:
        raise ValueError(f"{len(r)} samples for {r.shape[1] + dz} dimensions: the joint covariance is "
                         "singular; use eps > 0 or more samples")
    c = _covariance(torch.cat([z, r], 1))
    c = c + eps * torch.eye(len(c), dtype=c.dtype, device=c.device)
    sz, sr, szr = c[:dz, :dz], c[dz:, dz:], c[:dz, dz:]
    logdet = lambda m: _logdet(m, "a covariance")
    i_z = 0.5 * (logdet(sz) - logdet(sz - szr @ torch.linalg.solve(sr, szr.T)))
    i_r = 0.5 * (logdet(sr) - logdet(sr - szr.T @ torch.linalg.solve(sz, szr)))
    return (i_z, i_r) if both else i_z


def pairwise_distance_entropy(x, sigma=0.5, bound="kl", chunk=1024):
    """Pairwise-distance estimator of entropy (Kolchinsky & Tracey 2017), one of the two estimators
    the Collapses paper compares (section 4, after its ref. [1]). X is treated as a mixture of n Gaussians
    N(x_i, sigma^2 I) with equal weights:
        H = d/2 log(2 pi e sigma^2) - 1/n sum_i log(1/n sum_j exp(-D_ij)),
    D_ij = |x_i - x_j|^2 / (2 sigma^2) (KL divergence: an upper bound on the mixture entropy) or
    |x_i - x_j|^2 / (8 sigma^2) (bound="bhattacharyya": a lower bound). All points equal: the first term
    alone (total collapse); far apart: first term + log n. O(n^2 d) in row blocks, in x's precision."""
    x = _float(x)
    n, d = x.shape
    scale = {"kl": 2.0, "bhattacharyya": 8.0}[bound] * sigma ** 2
    norms, total = x.pow(2).sum(1), 0.0
    for i in range(0, n, chunk):
        sq = (norms[i:i + chunk, None] + norms[None] - 2 * x[i:i + chunk] @ x.T).clamp_min(0)  # (c, n)
        total += (_precise(torch.logsumexp(-sq / scale, dim=1)) - math.log(n)).sum().item()
    return d / 2 * math.log(2 * math.pi * math.e * sigma ** 2) - total / n


# ------------------------------------------------------------------------- geometry (AdaDim, Geometry papers)
def alignment(x, y, alpha=2):
    """Alignment (Wang & Isola 2020): mean_i |x_i - y_i|^alpha of L2-normalised positive pairs (rows)."""
    distance = (F.normalize(_precise(x), dim=1) - F.normalize(_precise(y), dim=1)).norm(dim=1)  # (n,)
    return distance.pow(alpha).mean().item()


def uniformity(x, t=2, chunk=1024):
    """Uniformity (Wang & Isola 2020; the AdaDim paper A.6): log of the mean over pairs i < j of
    exp(-t |x_i - x_j|^2), rows L2-normalised here (the paper's implementation, Wang & Isola's code, takes
    normalised features; raw ones would give -inf). 0 for identical points (a total collapse; zero rows
    stay zero, so all-zero features read 0 too), more negative = more uniform; -4 + log I0(4) ~ -1.575
    for t = 2 and points spread evenly on a circle (n -> infinity). Natural log. O(n^2 d) in row blocks,
    in x's precision, with log-sum-exp. Raises ValueError for fewer than 2 points."""
    x = F.normalize(_float(x), dim=1)
    n, blocks = len(x), []
    if n < 2:
        raise ValueError(f"{n} point: uniformity needs pairs")
    norms = x.pow(2).sum(1)                                       # 1, or 0 for a zero row
    for i in range(0, n, chunk):
        sq = (norms[i:i + chunk, None] + norms[None] - 2 * x[i:i + chunk] @ x.T).clamp_min(0)  # (c, n)
        rows = torch.arange(i, min(i + chunk, n), device=x.device)
        sq[rows - i, rows] = float("inf")                         # drop i = j (mean over i != j = over i < j)
        blocks.append(_precise(torch.logsumexp(-t * sq.flatten(), 0)))
    return (torch.logsumexp(torch.stack(blocks), 0) - math.log(n * (n - 1))).item()


def _negative_similarities(f1, f2, start=0, stop=None):
    """Cosine similarities of f1_i (rows start:stop) to its 2N - 2 negatives B_-i = {f1_j, f2_j : j != i}
    (Geometry paper eq. 1): (rows, 2N), columns index cat([f1, f2]), the two views of image i masked to -inf.
    Also returns the positive similarities Sim(f1_i, f2_i) of those rows."""
    f1, f2 = F.normalize(_float(f1), dim=1), F.normalize(_float(f2), dim=1)
    n, stop = len(f1), len(f1) if stop is None else min(stop, len(f1))
    sims = f1[start:stop] @ torch.cat([f1, f2]).T
    i = torch.arange(start, stop, device=f1.device)
    sims[i - start, i] = sims[i - start, i + n] = float("-inf")
    return sims, (f1[start:stop] * f2[start:stop]).sum(1)


def infonce_terms(f1, f2, beta=2.0):
    """InfoNCE of the Geometry paper eq. 1 (anchors f1_i, positive f2_i, the 2N - 2 negatives B_-i only in the
    denominator, rows L2-normalised, inverse temperature beta; N x 2N memory) and its decompositions:
    - Proposition C.1 (eq. 13): InfoNCE = mean_i [-beta f1_i.f2_i + beta f1_i.E_D[f~] + H(D_-i)], with
      D_-i the softmax of beta f1_i.f~_l over the negatives: keys "alignment_term", "repulsion_term",
      "entropy_term". The paper prints the middle term with a minus sign; its proof (appendix D.1,
      log Z_i = H(D_-i) + beta f1_i.E_D[f~]) gives the plus sign used here, which makes the identity exact.
    - the upper bound of Proposition 3.1 (eq. 3): "upper" = beta "invariance" + beta "repulsion" +
      log(2(N - 1)), invariance = -mean_i Sim(f1_i, f2_i) (eq. 4), repulsion = mean_i Sim(f1_i, f~_i*)
      (eq. 5) with f~_i* the most similar negative. For a linear projector f = W^T h this is exactly
      eqs. 4-5. upper >= InfoNCE (each of the 2(N-1) terms of Z_i is at most exp(beta * max)).
    Raises ValueError for fewer than 2 images (no negative)."""
    if len(f1) < 2:
        raise ValueError(f"{len(f1)} image: InfoNCE needs negatives")
    sims, positive = _negative_similarities(_precise(f1), _precise(f2))
    logits = beta * sims                                          # (N, 2N), -inf at the two views of i
    log_z = torch.logsumexp(logits, 1)                            # (N,)
    p = torch.softmax(logits, 1)                                  # D_-i
    expected = (p * logits.nan_to_num(neginf=0.0)).sum(1)         # beta f1_i.E_D[f~]
    n = len(f1)
    invariance, repulsion = -positive.mean().item(), sims.max(1).values.mean().item()
    return {"infonce": (log_z - beta * positive).mean().item(),
            "alignment_term": (-beta * positive).mean().item(),
            "repulsion_term": expected.mean().item(),
            "entropy_term": (log_z - expected).mean().item(),      # H(D_-i) = log Z_i - beta f1_i.E_D[f~]
            "upper": beta * invariance + beta * repulsion + math.log(2 * (n - 1)),
            "invariance": invariance, "repulsion": repulsion}


def nearest_negatives(h1, h2, f1=None, f2=None, chunk=1024):
    """For each image i, the index (into cat([h1, h2]), 0..2N-1) of h~_i*, the negative most similar to
    view 1 of image i, chosen in the projector's output space f when given (Geometry paper Proposition 3.1,
    Figure 6), else in h; and the normalised Euclidean distance between h1_i and h~_i* (Figure 5). The
    paper does not define "normalised": here it is the distance between the L2-normalised vectors,
    |h1_i/|h1_i| - h~*/|h~*||, in [0, 2]. Returns (index (N,), distance (N,)); O(N^2) time, row blocks.
    Raises ValueError for fewer than 2 images (no negative)."""
    if len(h1) < 2:
        raise ValueError(f"{len(h1)} image: there is no negative")
    f1, f2 = h1 if f1 is None else f1, h2 if f2 is None else f2
    nearest = torch.cat([_negative_similarities(f1, f2, i, i + chunk)[0].argmax(1)
                         for i in range(0, len(h1), chunk)])
    h_star = torch.cat([h1, h2])[nearest]
    return nearest, (F.normalize(_precise(h1), dim=1) - F.normalize(_precise(h_star), dim=1)).norm(dim=1)


def label_sharing(labels, nearest):
    """The Geometry paper Figure 6: the fraction of images i whose nearest negative h~_i* (index into the 2N
    views, nearest_negatives) shows an image of the same label as image i (that of h_i^(2))."""
    return (labels[nearest % len(labels)] == labels).float().mean().item()


def unexplained_variance(w, delta_h):
    """Fraction of the variance of the displacements delta_h_i = h_i^(2) - h~_i* (N, d_enc) that the
    column space of W (d_enc, d_proj; the paper's W with g(h) = W^T h, i.e. nn.Linear.weight.T) does not
    explain, Geometry paper eq. 10: sum_i min_t |delta_h_i - W t|^2 / sum_i |delta_h_i|^2. 0 when every
    delta_h_i lies in the column space, 1 when all are orthogonal to it. Raises ValueError when every
    displacement is zero (0 / 0)."""
    u, s, _ = torch.linalg.svd(_precise(w), full_matrices=False)
    q = u[:, s > s.max() * max(w.shape) * 1e-12]                 # orthonormal basis of the column space
    dh = _precise(delta_h)
    if not dh.any():
        raise ValueError("every displacement h2 - h* is zero: no variance to explain")
    return ((dh - dh @ q @ q.T).pow(2).sum() / dh.pow(2).sum()).item()


# ---------------------------------------------------------------------------------- report, tracking
class Measures(dict):
    """A dict of measures that never crashes: put(key, fn, ...) stores fn's value, or None when fn raises,
    with the reason kept under "undefined" so that every JSON file says why a value is null: a ValueError is
    an undefined value (constant features, a single sample, ...); any other error is recorded in one line
    (its kind and message) and the other measures go on. attempt() is put without storing a value."""
    def put(self, key, fn, *args, **kwargs):
        self[key] = self.attempt(key, fn, *args, **kwargs)
        return self[key]

    def attempt(self, key, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self[key] = None
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            self.setdefault("undefined", {})[key] = why if isinstance(e, ValueError) else \
                f"failed ({e.__class__.__name__}: {why})"


def report(backbone_features, projector_features, labels=None, views=None, projector_weight=None,
           beta=2.0, nlr_samples=2000, nlr_steps=500, pairwise_samples=2000, progress=False):
    """Every scalar measure that applies, as a flat dict (a Measures: a value that is undefined for these
    features is None, and out["undefined"] says why). R = backbone_features and Z = projector_features
    (n, d) of the same un-augmented images; labels (n,) optional; views = (h1, h2, f1, f2), backbone and
    projector features of two augmented views of the same images, for the two-view measures of the
    Geometry paper; projector_weight: nn.Linear.weight (d_proj, d_enc) of a linear projector. Effective
    rank, RankMe and the covariance spectra use the features as they are; entropies of a normalised
    Gram or covariance, uniformity and std use L2-normalised rows, so runs compare whatever the feature
    scale; redundancy and Gaussian/LD mutual information use standardised features. NLR (of R only)
    uses at most nlr_samples samples and nlr_steps steps, the pairwise entropy at most pairwise_samples."""
    out = Measures(n_samples=len(backbone_features))
    feats = {"R": measurable(backbone_features), "Z": measurable(projector_features)}
    labels, projector_weight = (None if t is None else t.detach().to(feats["R"].device)
                                for t in (labels, projector_weight))
    for name, x in tqdm(feats.items(), desc="measures", leave=False, disable=None if progress else True):
        u = F.normalize(_precise(x), dim=1)
        out[f"dim_{name}"] = x.shape[1]
        out.put(f"effective_rank_{name}", effective_rank, x)
        out.put(f"effective_rank_centered_{name}", effective_rank_centered, x)
        out.put(f"rankme_{name}", rankme, x)
        out.put(f"eigenvalue_count_{name}", eigenvalue_count, x)
        out.put(f"explained_variance_top30_{name}", explained_variance_ratio, x)
        out.put(f"von_neumann_entropy_{name}", von_neumann_entropy, u.T @ u)  # the unit rows' Gram spectrum
        out.put(f"matrix_entropy_{name}", lambda u: matrix_entropy(_covariance(u)), u)
        out.put(f"renyi_entropy_{name}", renyi2_entropy, u)
        out.put(f"logdet_entropy_{name}", logdet_entropy, u)
        out.put(f"pairwise_entropy_{name}", pairwise_distance_entropy, u[:pairwise_samples])
        out[f"std_{name}"] = u.std(0).mean().item() if len(u) > 1 else 0.0
        out.put(f"uniformity_{name}", uniformity, u)
        out.put(f"aac_{name}", average_absolute_correlation, x)
        out.put(f"avg_corr_{name}", average_correlation, x)
        out.put(f"lr_{name}", lambda x: linear_redundancy(x)[0], x)
    # NLR trains 20% x d networks: on R only, as the SSLPM paper (backbone features), on a bounded sample
    if nlr_steps > 0:
        out.put("nlr_R", lambda x: nonlinear_redundancy(x, steps=nlr_steps, progress=progress)[0],
                feats["R"][:nlr_samples])
    r, z = zscore(feats["R"]), zscore(feats["Z"])
    out.put("renyi_mi_RZ", renyi_mutual_information, feats["R"], feats["Z"])
    out.put("gaussian_mi_RZ", gaussian_mutual_information, r, z, eps=1e-3)
    out.put("ldmi_RZ", ld_mutual_information, r, z, eps=1e-3)
    # one view: the nearest OTHER image in projector space (the Geometry paper's Fig. 5-6, single-view case)
    r, z = feats["R"], feats["Z"]
    nearest = out.attempt("nearest_distance", nearest_negatives, r, r, z, z)
    if nearest is not None:
        nearest, distance = nearest
        out["nearest_distance"] = distance.mean().item()
        if labels is not None:
            out.put("nearest_label_sharing", label_sharing, labels, nearest)
    if projector_weight is not None:
        out.put("projector_rank", numerical_rank, projector_weight)
    if views is not None:
        h1, h2, f1, f2 = (measurable(v) for v in views)
        out.put("alignment_Z", alignment, f1, f2)
        terms = out.attempt("infonce", infonce_terms, f1, f2, beta)
        if terms is not None:
            out.update(terms)
        out.put("ldmi_Z1Z2", ld_mutual_information, zscore(f1), zscore(f2), eps=1e-3)  # thesis 5.4
        pairs = out.attempt("nearest_negative_distance", nearest_negatives, h1, h2, f1, f2)
        if pairs is not None:
            nearest, distance = pairs
            out["nearest_negative_distance"] = distance.mean().item()
            if labels is not None:
                out.put("label_sharing", label_sharing, labels[:len(h1)], nearest)
            if projector_weight is not None:
                out.put("unexplained_variance", unexplained_variance, projector_weight.T,
                        h2 - torch.cat([h1, h2])[nearest])
    return out


def linear_weight(projector):
    """The weight of a linear projector (one nn.Linear, optionally followed by parameter-free modules
    such as an L2 normalisation), else None."""
    leaves = [m for m in projector.modules() if not list(m.children())]
    linears = [m for m in leaves if isinstance(m, nn.Linear)]
    others = [m for m in leaves if not isinstance(m, nn.Linear)]
    simple = all(type(m).__name__ in ("Identity", "L2Normalize") for m in others)
    return linears[0].weight.detach() if len(linears) == 1 and simple else None


def measurable(x):
    """Detached features (or labels, a weight) where measures can run: on their device, or on the CPU where
    the device has no float64 (MPS), so that every measure computes as on a CPU; None stays None."""
    if x is None:
        return None
    return x.detach().to("cpu" if x.device.type in common.NO_FLOAT64 else x.device)


@torch.no_grad()
def extract(backbone, projector, images, data, device, augment=None):
    """Backbone features R and projector features Z, float32 (never autocast: see common.extract_features),
    of uint8 images (n, 3, H, W) in eval mode; with augment (a common.Augment): of its two views, returned
    as (h1, h2, f1, f2)."""
    hs = common.extract_features(backbone, images, data, device, views=augment)
    hs, training = (hs if augment is not None else (hs,)), projector.training
    projector.eval()
    zs = [torch.cat([projector(c) for c in h.split(512)]) for h in hs]   # (n, D) float32 each
    projector.train(training)
    return (*hs, *zs)


def track(backbone, projector, images, data, device, policy=None, tau=1e-2):
    """What a method logs every --track-every epochs (its epoch-end block calls this), on a fixed set of
    test images (uint8 (n, 3, H, W): data.track_x, the same images every time, so epochs compare), as a
    flat dict for log.jsonl (a Measures: an undefined value is None, and "undefined" says why):
    - of R (backbone) and Z (projector): effective_rank (the AdaDim paper's H(R), uncentred), AAC and
      average correlation, eigenvalue_count and explained_variance_top30 (AdaDim A.9); of Z also the
      std and uniformity of its L2-normalised rows and spectrum_Z, its covariance eigenvalues (the
      Collapses paper's Figure 8, a list); renyi_mi_RZ, I(R; Z) (AdaDim A.6);
    - with `policy` (the run's augmentation policy), two augmented views of the images: infonce and its
      upper bound (Geometry paper eqs. 1, 3), alignment of Z, and for a linear projector
      unexplained_variance (eq. 10);
    - for a linear projector, projector_rank, Rank_tau of its weight (Geometry paper Figure 1), and
      projector_effective_rank, the effective rank of the weight (its continuous counterpart).
    Cost: see benchmarks/metrics.py (about a second on a CPU for 1,000 images at width 8)."""
    r, z = (measurable(f) for f in extract(backbone, projector, images, data, device))
    u = F.normalize(_precise(z), dim=1)
    out = Measures()
    for name, x in (("R", r), ("Z", z)):
        out.put(f"effective_rank_{name}", effective_rank, x)
        out.put(f"aac_{name}", average_absolute_correlation, x)
        out.put(f"avg_corr_{name}", average_correlation, x)
        out.put(f"eigenvalue_count_{name}", eigenvalue_count, x)
        out.put(f"explained_variance_top30_{name}", explained_variance_ratio, x)
    out.put("renyi_mi_RZ", renyi_mutual_information, r, z)
    out["std_Z"] = u.std(0).mean().item()
    out.put("uniformity_Z", uniformity, u)
    out.put("spectrum_Z", lambda z: covariance_eigenvalues(z).tolist(), z)
    w = measurable(linear_weight(projector))
    if w is not None:
        out.put("projector_rank", numerical_rank, w, tau)
        out.put("projector_effective_rank", effective_rank, w)
    if policy is not None:
        augment = common.Augment(policy, data, images.shape[-1], shard=False)
        views = extract(backbone, projector, images, data, device, augment=augment)
        h1, h2, f1, f2 = (measurable(f) for f in views)
        terms = out.attempt("infonce", infonce_terms, f1, f2)
        if terms is not None:
            out["infonce"], out["infonce_upper"] = terms["infonce"], terms["upper"]
        out.put("alignment_Z", alignment, f1, f2)
        if w is not None:
            out.put("unexplained_variance", lambda: unexplained_variance(
                w.T, h2 - torch.cat([h1, h2])[nearest_negatives(h1, h2, f1, f2)[0]]))
    return out


# ------------------------------------------------------------------------------------ command line
SOURCES = {  # the table's last column: what a row is and where it comes from
    "effective_rank_centered": "effective rank of the centred features (not a paper's; Roy & Vetterli)",
    "effective_rank": "H(R): exp entropy of L1-normalised singular values, uncentred (AdaDim A.6)",
    "rankme": "RankMe (Garrido et al.), uncentred, eps 1e-7",
    "eigenvalue_count": "covariance eigenvalues > 0.01 of their sum (AdaDim A.9)",
    "explained_variance_top30": "variance in the top 30% covariance eigenvalues (AdaDim A.9)",
    "von_neumann_entropy": "-sum l log l, Gram of the unit rows, trace 1 (AdaDim A.6)",
    "matrix_entropy": "-tr(A log A) + tr(A), covariance of the unit rows (AdaDim A.6)",
    "renyi_entropy": "order-2 Renyi entropy of the unit rows' Gram (AdaDim A.6)",
    "logdet_entropy": "1/2 logdet(cov + 1e-4 I) + const, unit rows (CorInfoMax thesis eq. 3.3)",
    "pairwise_entropy": "pairwise-distance (KL) estimator, sigma 0.5, unit rows (Collapses paper)",
    "std": "mean per-dim std of unit rows (1/sqrt(d) if spread)",
    "uniformity": "log E exp(-2|x-y|^2), unit rows (Wang & Isola; AdaDim A.6)",
    "aac": "mean |correlation| off the diagonal (SSLPM paper def. 3.1)",
    "avg_corr": "mean correlation off the diagonal (Collapses paper Fig. 11)",
    "lr": "linear redundancy, ridge, all features (SSLPM paper eq. 4)",
    "nlr": "non-linear redundancy, MLP 128-64, 20%, <= 2000 samples (SSLPM paper eq. 5)",
    "renyi_mi": "order-2 Renyi matrix mutual information (AdaDim A.6)",
    "gaussian_mi": "Gaussian I(R;Z), eps 1e-3 (AdaDim eq. 1)",
    "ldmi": "LD mutual information, eps 1e-3 (CorInfoMax thesis eq. 3.6)",
    "nearest_distance": "distance to nearest other image (Geometry paper Fig. 5)",
    "nearest_label_sharing": "nearest other image has the same label (Geometry paper Fig. 6)",
    "projector_rank": "Rank_0.01 of the linear projector (Geometry paper eq. 2)",
    "alignment": "E |f1 - f2|^2 of two views (Wang & Isola)",
    "infonce": "InfoNCE, two views (Geometry paper eq. 1)",
    "alignment_term": "-beta f1.f2 (Geometry paper Prop. C.1)",
    "repulsion_term": "beta f1.E_D[f] (Geometry paper Prop. C.1)",
    "entropy_term": "H(D_-i) (Geometry paper Prop. C.1)",
    "upper": "upper bound on InfoNCE (Geometry paper eq. 3)",
    "invariance": "-mean Sim(f1, f2) (Geometry paper eq. 4)",
    "repulsion": "mean Sim(f1, nearest negative) (Geometry paper eq. 5)",
    "nearest_negative_distance": "|h1 - h*| of unit vectors (Geometry paper Fig. 5)",
    "label_sharing": "nearest negative shares the label (Geometry paper Fig. 6)",
    "unexplained_variance": "variance of h2 - h* outside col(W) (Geometry paper eq. 10)",
}


def load_run(path, device, data_dir=None):
    """Rebuild a run's model from its checkpoint through its own method file (args["method"]) and load
    its data (from data_dir if given: moved data, which load_data checks against the run's fingerprint);
    one-line errors (common.fail) for anything that is not such a checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        common.fail(f"checkpoint {path} is corrupt or not a torch checkpoint ({e.__class__.__name__})")
    ok = isinstance(ckpt, dict) and {"epoch", "args", "state"} <= set(ckpt) and isinstance(ckpt["args"], dict)
    method = ckpt["args"].get("method") if ok else None
    script = isinstance(method, str) and method.isidentifier() and os.path.isfile(f"{ROOT}/{method}.py")
    if not (script and isinstance(ckpt["state"], dict) and "model" in ckpt["state"]):
        common.fail(f"checkpoint {path} is not a checkpoint of this repository's method scripts (expected "
                    "epoch, args with a method, and state['model'], as written to runs/<run>/last.pt)")
    broken = [k for k, v in common.flat_values(ckpt["state"]["model"]) if not common.is_finite(v)]
    if broken:
        common.fail(f"checkpoint {path} has non-finite weights ({len(broken)} tensors, e.g. {broken[0]}): "
                    "its run diverged, there is nothing to measure")
    args = argparse.Namespace(**ckpt["args"])
    if data_dir:
        args.data_dir = os.path.abspath(data_dir)
    if ROOT not in sys.path:                                      # the method files live next to this one
        sys.path.insert(0, ROOT)
    module = importlib.import_module(method)
    if hasattr(module, "old_spellings"):  # arguments saved under a flag's old spelling (--projector)
        args = module.old_spellings(args)
    model_class = getattr(module, "Model", None)
    if model_class is None:
        common.fail(f"checkpoint {path}: {method}.py defines no class Model to rebuild the network with")
    try:
        model = model_class(args)
        model.load_state_dict(ckpt["state"]["model"])
    except Exception as e:  # arguments or weights from another version of the method file
        first = str(e).splitlines()[0][:120] if str(e) else ""
        common.fail(f"checkpoint {path}: {method}.Model cannot be rebuilt from its saved arguments and "
                    f"weights ({e.__class__.__name__}: {first})")
    return ckpt, args, model.to(device), common.load_data(args)


def measure_run(path, device, max_samples, nlr_steps=500, seed=0, data_dir=None):
    ckpt, args, model, data = load_run(path, device, data_dir)
    common.seed_everything(seed)
    keep = torch.randperm(len(data.test_x))[:max_samples]        # a fixed random subset of the test split
    images, labels = data.test_x[keep], data.test_y[keep]
    r, z = extract(model.backbone, model.projector, images, data, device)
    augment = common.Augment(args.policy, data, args.image_size, shard=False)  # the run's own augmentation
    views = extract(model.backbone, model.projector, images[:2048], data, device, augment=augment)
    w = linear_weight(model.projector)
    beta = 1 / args.temperature if getattr(args, "temperature", None) else 2.0  # the Geometry paper's: 2
    results = {"method": args.method, "dataset": args.dataset, "epoch": ckpt["epoch"], "beta": beta}
    results.update(report(r, z, labels, views=views, projector_weight=w, beta=beta,
                          nlr_steps=nlr_steps, progress=True))
    return results


def source(key):  # the SOURCES entry whose name is the longest prefix of key
    return SOURCES.get(max((s for s in SOURCES if key.startswith(s)), key=len, default=""), "")


def print_table(columns, names):
    """One aligned table: a row per measure, a column per run, then where the measure comes from; then
    why a value is undefined ("-"), where one is."""
    fmt = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
    keys = list(dict.fromkeys(k for c in columns for k in c if k != "undefined"))
    rows = [["measure", *names, "what (paper)"]]
    rows += [[k, *(fmt(c.get(k)) for c in columns), source(k)] for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(names) + 1)]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(row[1:-1], widths[1:])] + [row[-1]]
        print("  ".join(cells))
    for name, column in zip(names, columns):
        for key, why in column.get("undefined", {}).items():
            print(f"{name}: {key} is undefined: {why}")


def main(argv=None):
    p = common.ArgumentParser(prog="metrics.py",
                              description="Every analysis measure of a run's representation.")
    p.add_argument("checkpoint", nargs="?", help="a run's checkpoint, runs/<run>/last.pt")
    p.add_argument("--compare", nargs="+", metavar="CKPT", help="several checkpoints, side by side")
    p.add_argument("--max-samples", type=common.positive(int), default=5000,
                   help="test images used (default 5000)")
    p.add_argument("--nlr-steps", type=int, default=500,
                   help="training steps of the NLR networks (0: skip NLR)")
    p.add_argument("--json", metavar="PATH", help="write the results here (default: next to each checkpoint, "
                   "named after it: metrics-last.json for last.pt)")
    p.add_argument("--data-dir", help="where the runs' data is now, if it moved (default: where each run "
                   "recorded it)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, mps, cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    paths = ([args.checkpoint] if args.checkpoint else []) + (args.compare or [])
    if not paths:
        p.error("give a checkpoint (runs/<run>/last.pt) or --compare A.pt B.pt ...")
    if args.nlr_steps < 0:
        p.error(f"argument --nlr-steps: must be 0 (skip NLR) or more, got {args.nlr_steps}")
    if args.device not in ("auto", "cuda", "mps", "cpu") and not args.device.startswith("cuda:"):
        p.error(f"argument --device: expected auto, cuda, cuda:N, mps or cpu, got {args.device!r}")
    for path in paths:  # before any work: a typo in the third of three runs fails at once
        if not os.path.isfile(path):
            common.fail(f"checkpoint {path}: no such file (give a run's last.pt, e.g. runs/<run>/last.pt)")
    device = common.get_device(args.device)
    results = [measure_run(p, device, args.max_samples, args.nlr_steps, args.seed, args.data_dir)
               for p in paths]
    print_table(results, column_names(paths))
    if args.json:
        outputs = {args.json: results[0] if len(paths) == 1 else dict(zip(paths, results))}
    else:  # named after the checkpoint: epoch1.pt and last.pt of one run each keep their own
        name = lambda p: f"metrics-{os.path.splitext(os.path.basename(p))[0]}.json"
        outputs = {os.path.join(os.path.dirname(os.path.abspath(p)), name(p)): r
                   for p, r in zip(paths, results)}
    for path, result in outputs.items():
        try:
            common.atomic_write(path, common.to_json(result, indent=1))
        except OSError as e:
            common.fail(f"{'--json ' if args.json else ''}{path}: cannot write it ({e.strerror}); "
                        "the table above is all there is")
        common.print0(f"wrote {path}")


def column_names(paths):
    """The shortest part of each checkpoint's path that tells it from the others: the last components
    before the file or folder names that all share (runs/a/last.pt, runs/b/last.pt: a and b; a/epoch1.pt,
    a/last.pt: epoch1.pt and last.pt). One checkpoint: its run folder."""
    parts = [os.path.abspath(p).split(os.sep) for p in paths]
    if len(parts) == 1:
        return [common.printable(parts[0][-2])]
    while (min(map(len, parts)) > 2 and len({p[-1] for p in parts}) == 1
           and len({tuple(p) for p in parts}) > 1):
        parts = [p[:-1] for p in parts]  # the same name at the end of every path tells nothing apart
    distinct = len({tuple(p) for p in parts})
    k = next(k for k in range(1, max(map(len, parts)) + 1) if len({tuple(p[-k:]) for p in parts}) == distinct)
    return [common.printable(os.sep.join(p[-k:])) for p in parts]


if __name__ == "__main__":
    main()
