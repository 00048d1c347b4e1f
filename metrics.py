"""Analysis measures of self-supervised representations: redundancy, spectra, information, geometry.

Pure tensor functions. Features are (n, d) matrices (n samples, d features) unless a docstring says
otherwise; each docstring gives the formula and where it comes from, citing the papers by these names:
    SSLPM paper       "Beyond Pairwise Correlations: Higher-Order Redundancies in SSL Representation Learning"
    Collapses paper   "Preventing Collapses in Non-Contrastive Self-Supervised Learning" (Echchahed & El Massaudi)
    CorInfoMax thesis "Self-Supervised Learning with an Information Maximization Criterion" (Ozsoy 2022;
                      paper: arXiv 2209.07999)
    AdaDim paper      "AdaDim: Dimensionality Adaptation for SSL Representational Dynamics"
    Geometry paper    "Toward a Geometrical Understanding of Self-supervised Contrastive Learning" (Cosentino
                      et al. 2022, arXiv 2205.06926)
Wherever an identity allows it the work is done on d x d matrices instead of n x n ones, and in float64
where log-determinants and eigenvalues need it. Scalar measures return Python floats.

Also here: report() (every scalar measure in one dict), track() (the few measures each method logs
every --track-every epochs) and a command line:
    python metrics.py runs/<run>/last.pt                   one table, also written to metrics.json
    python metrics.py --compare runs/a/last.pt runs/b/last.pt
"""
import argparse
import importlib
import json
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
def zscore(x, eps=1e-8):
    """z-score every feature over the samples: mean 0, variance 1 (SSLPM paper section 3.2, appendix A).
    Population variance (divide by n), so that C = X^T X / n is the correlation matrix. A constant
    feature becomes 0 instead of NaN. Returns float64."""
    x = x.double() - x.double().mean(0)
    return x / x.pow(2).mean(0).sqrt().clamp_min(eps)


def gram(x):
    return x.T @ x / len(x)                                   # (d, d) second moments, float64 for x float64


def correlation_matrix(x):
    return gram(zscore(x))                               # (d, d), ones on the diagonal


def average_absolute_correlation(x):
    """AAC, SSLPM paper definition 3.1 (eq. 2): AAC_j = sum_{i != j} |C_ij| / (d - 1), AAC = mean_j AAC_j,
    i.e. the mean of |C_ij| over all i != j of the correlation matrix of the standardised features."""
    c = correlation_matrix(x)
    d = len(c)
    return ((c.abs().sum() - c.diagonal().abs().sum()) / (d * (d - 1))).item()


def average_correlation(x):
    """The Collapses paper section 4 (Figure 11): the signed mean of the off-diagonal entries of the correlation
    matrix. Unlike AAC, positive and negative correlations cancel."""
    c = correlation_matrix(x)
    d = len(c)
    return ((c.sum() - c.diagonal().sum()) / (d * (d - 1))).item()


def _split(n, d, fraction, test_fraction, val_fraction, seed):
    """Samples: train / test (SSLPM paper appendix A: fit on 80%, evaluate on 20%), and train again into
    fit / val for choosing the ridge penalty. Features: a random `fraction` of them as targets.
    Seeded, so LR and NLR with the same seed and fraction use the same split and targets."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_test = max(1, round(test_fraction * n))
    test, train = perm[:n_test], perm[n_test:]
    n_val = max(1, round(val_fraction * len(train)))
    val, fit = train[:n_val], train[n_val:]
    targets = torch.randperm(d, generator=g)[:max(1, round(fraction * d))].sort().values
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
        out.append((p * (gram_eval @ p)).sum(0) / p.diagonal() ** 2)             # (d,) p_j^T G_eval p_j / P_jj^2
    return torch.stack(out)                                                       # (len(ridges), d)


def linear_redundancy(x, fraction=1.0, ridges=(1e-4, 1e-3, 1e-2, 1e-1, 1.0), test_fraction=0.2,
                      val_fraction=0.2, seed=0):
    """Linear redundancy, SSLPM paper eq. 4: LR_j = 1 - MSE of the best linear prediction of standardised
    feature j from all the others (the MSE relative to predicting 0, see _heldout_note), LR = mean_j LR_j
    over a random `fraction` of the features (the paper: 20%; all by default, as it costs the same here).
    As in appendix A the regression is fitted on 80% of the samples and its MSE measured on the other
    20%; the ridge penalty (section 3.2: "chosen through cross-validation") is chosen per target on a
    validation part of the fitting samples, then refit on all of them. Everything comes from three
    Gram matrices (one pass over the data, O(n d^2)) and 2 * len(ridges) d x d factorisations
    (ridge_heldout_mse). Returns (LR, per_feature): per_feature (d,) is NaN where j was not a target."""
    x = zscore(x)
    train, test, fit, val, targets = _split(len(x), x.shape[1], fraction, test_fraction, val_fraction, seed)
    g_fit, g_val, g_test = gram(x[fit]), gram(x[val]), gram(x[test])
    g_train = (len(fit) * g_fit + len(val) * g_val) / len(train)                # train = fit + val
    best = ridge_heldout_mse(g_fit, g_val, ridges).argmin(0)                    # (d,) best penalty per target
    mse = ridge_heldout_mse(g_train, g_test, ridges).gather(0, best[None])[0]   # (d,)
    per_feature = torch.full_like(mse, float("nan"))
    per_feature[targets] = 1 - (mse / g_test.diagonal())[targets]               # see _heldout_note
    return per_feature[targets].mean().item(), per_feature


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
    train, test, _, _, targets = _split(n, d, fraction, test_fraction, 0.2, seed)
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
    per_feature = torch.full((d,), float("nan"), dtype=torch.float64)
    per_feature[targets] = 1 - sq.double().cpu() / x_test[:, cols].double().pow(2).sum(0).cpu()  # _heldout_note
    return per_feature[targets].mean().item(), per_feature


# ------------------------------------------------------ spectra (Collapses, AdaDim, Geometry papers)
def singular_values(x, center=True):
    """Singular values of x, descending: of the centred features by default (their squares / (n - 1)
    are the eigenvalues of the covariance, the spectrum of the Collapses paper's Figure 8 and the Geometry
    paper's Figure 4), or of
    a matrix as it is, e.g. a weight (center=False). Through the smaller Gram matrix in float64:
    O(n d^2) + O(d^3); accurate down to about 1e-8 of the largest value."""
    x = x.double()
    if center:
        x = x - x.mean(0)
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)


def _float(x):  # float64 stays float64 (exact tests); anything else is computed in float32
    return x if x.dtype == torch.float64 else x.float()


def _entropy(p):  # Shannon entropy (nats) of a probability vector, 0 log 0 = 0
    return -(p * p.clamp_min(1e-300).log()).sum().item()


def effective_rank(x, center=True):
    """Effective rank (Roy & Vetterli 2007; AdaDim paper A.6 and section 4): exp(H(p)) with p = s / |s|_1
    the L1-normalised singular values s of the (centred) features. Between 1 and min(n, d); equals k
    for k equal non-zero singular values."""
    s = singular_values(x, center)
    return math.exp(_entropy(s / s.sum()))


def rankme(x, eps=1e-7, center=False):
    """RankMe (Garrido et al. 2023): exp(-sum_k p_k log p_k) with p_k = s_k / |s|_1 + eps, s the singular
    values of the embedding matrix as it is (not centred, as in that paper)."""
    s = singular_values(x, center)
    p = s / s.sum() + eps
    return math.exp(-(p * p.log()).sum().item())


def numerical_rank(matrix, tau=1e-2):
    """Rank_tau(W) = sum_j 1{|sigma_j| >= tau} (Geometry paper eq. 2): the number of singular values of the
    matrix (not centred) at or above the ABSOLUTE threshold tau. The paper applies it to the 512 x 128
    linear projector (Figure 1) and does not state tau; 1e-2 here."""
    return int((singular_values(matrix, center=False) >= tau).sum())


def covariance_eigenvalues(x):
    s = singular_values(x)
    return s.pow(2) / max(len(x) - 1, 1)                      # (min(n, d),) descending


def eigenvalue_count(x, tau=0.01):
    """The AdaDim paper A.9 (Figure 3b): the number of covariance eigenvalues above tau after dividing all of
    them by their sum (their L1 norm)."""
    lam = covariance_eigenvalues(x)
    return int((lam / lam.sum() > tau).sum())


def explained_variance_ratio(x, top=0.3):
    """The AdaDim paper A.9 (Figure 3c): sum of the largest floor(top * N) of the N covariance eigenvalues
    (at least one) over the sum of all of them."""
    lam = covariance_eigenvalues(x)
    m = max(1, int(top * len(lam)))
    return (lam[:m].sum() / lam.sum()).item()


def von_neumann_entropy(a):
    """H = -sum_i lam_i log lam_i over the eigenvalues of a PSD (d, d) matrix scaled to trace 1
    (AdaDim paper A.6). log(rank) for a flat spectrum, 0 for rank one."""
    lam = torch.linalg.eigvalsh(a.double()).clamp_min(0)
    return _entropy(lam / lam.sum())


def matrix_entropy(a):
    """Matrix entropy of a PSD matrix A (AdaDim paper A.6, after its ref. 58): ME(A) = -tr(A log A) + tr(A)
    = sum_i (-lam_i log lam_i + lam_i). Not normalised: the trace term grows with more and larger
    eigenvalues."""
    lam = torch.linalg.eigvalsh(a.double()).clamp_min(0)
    return _entropy(lam) + lam.sum().item()


# ------------------------------------- information (Collapses paper, CorInfoMax thesis, AdaDim paper)
def renyi_entropy(gram, alpha=2):
    """Matrix-based Renyi entropy of order alpha of a PSD (n, n) Gram matrix (AdaDim paper A.6):
    K = gram / tr(gram), H_alpha = log(tr(K^alpha)) / (1 - alpha) = log(sum_i lam_i^alpha) / (1 - alpha);
    alpha = 2: -log |K|_F^2 (no eigenvalues needed); alpha = 1: the von Neumann limit.
    log n for n orthogonal equal-norm rows, 0 for rank one."""
    k = gram.double() / gram.double().diagonal().sum()
    if alpha == 2:
        return -math.log(k.pow(2).sum().item())
    lam = torch.linalg.eigvalsh(k).clamp_min(0)
    if alpha == 1:
        return _entropy(lam)
    return math.log(lam.pow(alpha).sum().item()) / (1 - alpha)


def renyi2_entropy(x):
    """Order-2 Renyi entropy of the Gram matrix of the rows of x (n, d) without forming it:
    K = X X^T / tr(X X^T), H_2 = -log tr(K^2) and tr((X X^T)^2) = |X^T X|_F^2, a d x d product."""
    x = x.double()
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
    Other orders use the explicit n x n matrices and their eigenvalues (O(n^3))."""
    r, z = F.normalize(r.double(), dim=1), F.normalize(z.double(), dim=1)
    if alpha != 2:
        a, b = r @ r.T, z @ z.T
        return renyi_entropy(a, alpha) + renyi_entropy(b, alpha) - renyi_entropy(a * b, alpha)
    trace = (r.pow(2).sum(1) * z.pow(2).sum(1)).sum().item()     # tr(A o B) (= n with unit rows)
    rf, zf, sq = r.float(), z.float(), 0.0
    for i in range(0, len(r), chunk):                            # blocks of the two n x n Gram matrices
        sq += ((rf[i:i + chunk] @ rf.T) * (zf[i:i + chunk] @ zf.T)).double().pow(2).sum().item()
    return renyi2_entropy(r) + renyi2_entropy(z) + math.log(sq / trace ** 2)


def logdet_entropy(x, eps=1e-4):
    """Log-determinant (LD) entropy, CorInfoMax thesis eq. 3.3: H = 1/2 log det(R_x + eps I) + d/2 log(2 pi e),
    R_x the sample covariance (unbiased, divide by n - 1), natural log (nats). With eps = 0 it is the
    differential entropy of a Gaussian with covariance R_x. The Collapses paper compares it with the
    pairwise-distance estimator as a collapse indicator."""
    d = x.shape[1]
    cov = torch.cov(x.double().T).reshape(d, d) + eps * torch.eye(d, dtype=torch.float64, device=x.device)
    return 0.5 * torch.linalg.slogdet(cov)[1].item() + d / 2 * math.log(2 * math.pi * math.e)


def ld_mutual_information(x, y, eps=1e-4, symmetric=True):
    """LD mutual information (LDMI), CorInfoMax thesis eqs. 3.5-3.6, nats, sample covariances (n - 1):
        I(x; y) = 1/2 logdet(R_x + eps I) - 1/2 logdet(R_x - R_xy (R_y + eps I)^-1 R_xy^T + eps I)  (3.5)
    symmetric=True (default) returns eq. 3.6, the average of 3.5 and 3.5 with x and y exchanged. The
    thesis calls the two "equivalent": they are equal for eps = 0 (both are the Gaussian mutual
    information), not for eps > 0. >= 0, and 0 exactly when R_xy = 0 (thesis Lemma 1)."""
    dx = x.shape[1]
    c = torch.cov(torch.cat([x, y], 1).double().T)
    rx, ry, rxy = c[:dx, :dx], c[dx:, dx:], c[:dx, dx:]

    def one_sided(ra, rb, rab):
        ea, eb = (eps * torch.eye(len(m), dtype=m.dtype, device=m.device) for m in (ra, rb))
        error = ra - rab @ torch.linalg.solve(rb + eb, rab.T)     # covariance of the linear-MMSE error
        return 0.5 * (torch.linalg.slogdet(ra + ea)[1] - torch.linalg.slogdet(error + ea)[1]).item()
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
    1/2 (ln|S_R| + ln|S_Z| - ln|S|)). Needs n > d_r + d_z unless eps > 0."""
    dz = z.shape[1]
    c = torch.cov(torch.cat([z, r], 1).double().T)
    c = c + eps * torch.eye(len(c), dtype=c.dtype, device=c.device)
    sz, sr, szr = c[:dz, :dz], c[dz:, dz:], c[:dz, dz:]
    logdet = lambda m: torch.linalg.slogdet(m)[1].item()
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
        total += (torch.logsumexp(-sq / scale, dim=1).double() - math.log(n)).sum().item()
    return d / 2 * math.log(2 * math.pi * math.e * sigma ** 2) - total / n


# ------------------------------------------------------------------------- geometry (AdaDim, Geometry papers)
def alignment(x, y, alpha=2):
    """Alignment (Wang & Isola 2020): mean_i |x_i - y_i|^alpha of L2-normalised positive pairs (rows)."""
    return (F.normalize(x.double(), dim=1) - F.normalize(y.double(), dim=1)).norm(dim=1).pow(alpha).mean().item()


def uniformity(x, t=2, chunk=1024):
    """Uniformity (Wang & Isola 2020; the AdaDim paper A.6): log of the mean over pairs i < j of
    exp(-t |x_i - x_j|^2), rows L2-normalised here. 0 for identical points, more negative = more
    uniform; -4 + log I0(4) ~ -1.575 for t = 2 and points spread evenly on a circle (n -> infinity).
    O(n^2 d) in row blocks, in x's precision, with log-sum-exp."""
    x = F.normalize(_float(x), dim=1)
    n, blocks = len(x), []
    for i in range(0, n, chunk):
        sq = (2 - 2 * x[i:i + chunk] @ x.T).clamp_min(0)         # (c, n) squared distances of unit rows
        rows = torch.arange(i, min(i + chunk, n), device=x.device)
        sq[rows - i, rows] = float("inf")                         # drop i = j; mean over i != j = mean over i < j
        blocks.append(torch.logsumexp(-t * sq.flatten(), 0).double())
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
      eqs. 4-5. upper >= InfoNCE (each of the 2(N-1) terms of Z_i is at most exp(beta * max)). """
    sims, positive = _negative_similarities(f1.double(), f2.double())
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
    |h1_i/|h1_i| - h~*/|h~*||, in [0, 2]. Returns (index (N,), distance (N,)); O(N^2) time, row blocks."""
    f1, f2 = h1 if f1 is None else f1, h2 if f2 is None else f2
    nearest = torch.cat([_negative_similarities(f1, f2, i, i + chunk)[0].argmax(1) for i in range(0, len(h1), chunk)])
    h_star = torch.cat([h1, h2])[nearest]
    return nearest, (F.normalize(h1.double(), dim=1) - F.normalize(h_star.double(), dim=1)).norm(dim=1)


def label_sharing(labels, nearest):
    """The Geometry paper Figure 6: the fraction of images i whose nearest negative h~_i* (index into the 2N
    views, nearest_negatives) shows an image of the same label as image i (that of h_i^(2))."""
    return (labels[nearest % len(labels)] == labels).double().mean().item()


def unexplained_variance(w, delta_h):
    """Fraction of the variance of the displacements delta_h_i = h_i^(2) - h~_i* (N, d_enc) that the
    column space of W (d_enc, d_proj; the paper's W with g(h) = W^T h, i.e. nn.Linear.weight.T) does not
    explain, Geometry paper eq. 10: sum_i min_t |delta_h_i - W t|^2 / sum_i |delta_h_i|^2. 0 when every
    delta_h_i lies in the column space, 1 when all are orthogonal to it."""
    u, s, _ = torch.linalg.svd(w.double(), full_matrices=False)
    q = u[:, s > s.max() * max(w.shape) * 1e-12]                 # orthonormal basis of the column space
    dh = delta_h.double()
    return ((dh - dh @ q @ q.T).pow(2).sum() / dh.pow(2).sum()).item()


# ---------------------------------------------------------------------------------- report, tracking
def report(backbone_features, projector_features, labels=None, views=None, projector_weight=None,
           beta=2.0, nlr_samples=2000, nlr_steps=500, pairwise_samples=2000, progress=False):
    """Every scalar measure that applies, as a flat dict. R = backbone_features and Z = projector_features
    (n, d) of the same un-augmented images; labels (n,) optional; views = (h1, h2, f1, f2), backbone and
    projector features of two augmented views of the same images, for the two-view measures of the Geometry paper;
    projector_weight: nn.Linear.weight (d_proj, d_enc) of a linear projector. Measures of a normalised
    covariance or distribution (entropies, uniformity, std) use L2-normalised rows, so runs compare
    whatever the feature scale; redundancy and Gaussian/LD mutual information use standardised features.
    NLR (of R only) uses at most nlr_samples samples and nlr_steps steps, the pairwise entropy at most
    pairwise_samples."""
    out = {"n_samples": len(backbone_features)}
    feats = {"R": backbone_features.detach(), "Z": projector_features.detach()}
    for name, x in tqdm(feats.items(), desc="measures", leave=False, disable=None if progress else True):
        u = F.normalize(x.double(), dim=1)
        cov_u = torch.cov(u.T).reshape(x.shape[1], x.shape[1])    # covariance of the unit rows
        out.update({f"dim_{name}": x.shape[1],
                    f"effective_rank_{name}": effective_rank(x), f"rankme_{name}": rankme(x),
                    f"eigenvalue_count_{name}": eigenvalue_count(x),
                    f"explained_variance_top30_{name}": explained_variance_ratio(x),
                    f"von_neumann_entropy_{name}": von_neumann_entropy(cov_u),
                    f"matrix_entropy_{name}": matrix_entropy(cov_u),
                    f"renyi_entropy_{name}": renyi2_entropy(u),
                    f"logdet_entropy_{name}": logdet_entropy(u),
                    f"pairwise_entropy_{name}": pairwise_distance_entropy(u[:pairwise_samples]),
                    f"std_{name}": u.std(0).mean().item(), f"uniformity_{name}": uniformity(u),
                    f"aac_{name}": average_absolute_correlation(x), f"avg_corr_{name}": average_correlation(x),
                    f"lr_{name}": linear_redundancy(x)[0]})
    # NLR trains 20% x d networks: on R only, as the SSLPM paper (backbone features), on a bounded sample
    if nlr_steps > 0:
        out["nlr_R"] = nonlinear_redundancy(feats["R"][:nlr_samples], steps=nlr_steps, progress=progress)[0]
    r, z = zscore(feats["R"]), zscore(feats["Z"])
    out["renyi_mi_RZ"] = renyi_mutual_information(feats["R"], feats["Z"])
    out["gaussian_mi_RZ"] = gaussian_mutual_information(r, z, eps=1e-3)
    out["ldmi_RZ"] = ld_mutual_information(r, z, eps=1e-3)
    # one view: the nearest OTHER image in projector space (the single-view case of the Geometry paper Fig. 5-6)
    nearest, distance = nearest_negatives(feats["R"], feats["R"], feats["Z"], feats["Z"])
    out["nearest_distance"] = distance.mean().item()
    if labels is not None:
        out["nearest_label_sharing"] = label_sharing(labels.to(nearest.device), nearest)
    if projector_weight is not None:
        out["projector_rank"] = numerical_rank(projector_weight)
    if views is not None:
        h1, h2, f1, f2 = (v.detach() for v in views)
        out["alignment_Z"] = alignment(f1, f2)
        out.update(infonce_terms(f1, f2, beta))
        out["ldmi_Z1Z2"] = ld_mutual_information(zscore(f1), zscore(f2), eps=1e-3)  # thesis 5.4
        nearest, distance = nearest_negatives(h1, h2, f1, f2)
        out["nearest_negative_distance"] = distance.mean().item()
        if labels is not None:
            out["label_sharing"] = label_sharing(labels[:len(h1)].to(nearest.device), nearest)
        if projector_weight is not None:
            out["unexplained_variance"] = unexplained_variance(projector_weight.T, h2 - torch.cat([h1, h2])[nearest])
    return out


def linear_weight(projector):
    """The weight of a linear projector (one nn.Linear, optionally followed by parameter-free modules
    such as an L2 normalisation), else None."""
    leaves = [m for m in projector.modules() if not list(m.children())]
    linears = [m for m in leaves if isinstance(m, nn.Linear)]
    others = [m for m in leaves if not isinstance(m, nn.Linear)]
    simple = all(type(m).__name__ in ("Identity", "L2Normalize") for m in others)
    return linears[0].weight.detach() if len(linears) == 1 and simple else None


@torch.no_grad()
def extract(backbone, projector, images, data, device, augment=None, batch_size=512):
    """Backbone features R and projector features Z (float32) of uint8 images (n, 3, H, W), in eval
    mode, as common.extract_features; with augment (a common.Augment): of its two views,
    returned as (h1, h2, f1, f2)."""
    modes = backbone.training, projector.training
    backbone.eval(), projector.eval()
    outs = []
    for chunk in images.split(batch_size):
        chunk = chunk.to(device)
        inputs = augment(chunk) if augment is not None else (data.normalize(chunk),)
        with common.autocast(device):
            hs = [backbone(x).float() for x in inputs]
        outs.append(hs + [projector(h).float() for h in hs])      # projector in float32
    backbone.train(modes[0]), projector.train(modes[1])
    return tuple(torch.cat(parts) for parts in zip(*outs))


def track(backbone, projector, images, data, device, tau=1e-2):
    """What a method logs every --track-every epochs (its epoch-end block calls this), on a fixed set of
    test images (uint8 (n, 3, H, W); the same images every time, so epochs compare): effective rank of R and Z, Renyi I(R; Z),
    AAC of R, mean per-dimension std and uniformity of the L2-normalised Z, and, for a linear projector,
    Rank_tau of its weight (Geometry paper Figure 1). Returns a flat dict of floats for log.jsonl.
    Cost on one CPU thread, 1000 32-px images, width-8 ResNet-18 + 2048-256 MLP projector: about 0.8 s
    per call, 0.6 s of it the forward passes."""
    r, z = extract(backbone, projector, images, data, device)
    u = F.normalize(z.double(), dim=1)
    out = {"effective_rank_R": effective_rank(r), "effective_rank_Z": effective_rank(z),
           "renyi_mi_RZ": renyi_mutual_information(r, z), "aac_R": average_absolute_correlation(r),
           "std_Z": u.std(0).mean().item(), "uniformity_Z": uniformity(u)}
    w = linear_weight(projector)
    if w is not None:
        out["projector_rank"] = numerical_rank(w, tau)
    return out


# ------------------------------------------------------------------------------------ command line
SOURCES = {  # the table's last column: what a row is and where it comes from
    "effective_rank": "exp entropy of L1-normalised singular values (Roy & Vetterli; AdaDim)",
    "rankme": "RankMe (Garrido et al.), eps 1e-7",
    "eigenvalue_count": "normalised eigenvalues > 0.01 (AdaDim A.9)",
    "explained_variance_top30": "variance in the top 30% eigenvalues (AdaDim A.9)",
    "von_neumann_entropy": "-sum l log l, unit-row covariance (AdaDim A.6)",
    "matrix_entropy": "-tr(A log A) + tr(A), unit-row covariance (AdaDim A.6)",
    "renyi_entropy": "order-2 Renyi entropy of the unit-row Gram (AdaDim A.6)",
    "logdet_entropy": "1/2 logdet(cov + 1e-4 I) + const, unit rows (CorInfoMax thesis eq. 3.3)",
    "pairwise_entropy": "pairwise-distance estimator, sigma 0.5, unit rows (Collapses paper)",
    "std": "mean per-dim std of unit rows (1/sqrt(d) if spread)",
    "uniformity": "log E exp(-2|x-y|^2) (Wang & Isola)",
    "aac": "mean |correlation| off the diagonal (SSLPM paper def. 3.1)",
    "avg_corr": "mean correlation off the diagonal (Collapses paper)",
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


def load_run(path, device):
    """Rebuild a run's model from its checkpoint through its own method file (args["method"]) and load
    its data; one-line errors (common.fail) for anything that is not such a checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        common.fail(f"checkpoint {path} is corrupt or not a torch checkpoint ({e.__class__.__name__})")
    ok = isinstance(ckpt, dict) and {"epoch", "args", "state"} <= set(ckpt) and isinstance(ckpt["args"], dict)
    method = ckpt["args"].get("method") if ok else None
    if not (isinstance(method, str) and method.isidentifier() and os.path.isfile(os.path.join(ROOT, f"{method}.py"))
            and isinstance(ckpt["state"], dict) and "model" in ckpt["state"]):
        common.fail(f"checkpoint {path} is not a checkpoint of this repository's method scripts "
                    "(expected epoch, args with a method, and state['model'], as written to runs/<run>/last.pt)")
    args = argparse.Namespace(**ckpt["args"])
    if ROOT not in sys.path:                                      # the method files live next to this one
        sys.path.insert(0, ROOT)
    model_class = getattr(importlib.import_module(method), "Model", None)
    if model_class is None:
        common.fail(f"checkpoint {path}: {method}.py defines no class Model to rebuild the network with")
    try:
        model = model_class(args)
        model.load_state_dict(ckpt["state"]["model"])
    except Exception as e:  # arguments or weights from another version of the method file
        common.fail(f"checkpoint {path}: {method}.Model cannot be rebuilt from its saved arguments and weights "
                    f"({e.__class__.__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
    return ckpt, args, model.to(device), common.load_data(args)


def measure_run(path, device, max_samples, nlr_steps=500, seed=0):
    ckpt, args, model, data = load_run(path, device)
    common.seed_everything(seed)
    keep = torch.randperm(len(data.test_x))[:max_samples]        # a fixed random subset of the test split
    images, labels = data.test_x[keep], data.test_y[keep]
    r, z = extract(model.backbone, model.projector, images, data, device)
    augment = common.Augment(args.policy, data, args.image_size)  # the run's own augmentation policy
    views = extract(model.backbone, model.projector, images[:2048], data, device, augment=augment)
    w = linear_weight(model.projector)
    beta = 1 / args.temperature if getattr(args, "temperature", None) else 2.0  # the Geometry paper uses beta = 2
    results = {"method": args.method, "dataset": args.dataset, "epoch": ckpt["epoch"], "beta": beta}
    results.update(report(r, z, labels.to(r.device), views=views, projector_weight=w, beta=beta,
                          nlr_steps=nlr_steps, progress=True))
    return results


def source(key):  # the SOURCES entry whose name is the longest prefix of key
    return SOURCES.get(max((s for s in SOURCES if key.startswith(s)), key=len, default=""), "")


def print_table(columns, names):
    """One aligned table: a row per measure, a column per run, then where the measure comes from."""
    fmt = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
    keys = list(dict.fromkeys(k for c in columns for k in c))
    rows = [["measure", *names, "what (paper)"]] + [[k, *(fmt(c.get(k)) for c in columns), source(k)] for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(names) + 1)]
    for row in rows:
        print("  ".join([row[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(row[1:-1], widths[1:])] + [row[-1]]))


def main(argv=None):
    p = common.ArgumentParser(prog="metrics.py", description="Every analysis measure of a run's representation.")
    p.add_argument("checkpoint", nargs="?", help="a run's checkpoint, runs/<run>/last.pt")
    p.add_argument("--compare", nargs="+", metavar="CKPT", help="several checkpoints, side by side")
    p.add_argument("--max-samples", type=common.positive(int), default=5000, help="test images used (default 5000)")
    p.add_argument("--nlr-steps", type=int, default=500, help="training steps of the NLR networks (0: skip NLR)")
    p.add_argument("--json", metavar="PATH", help="write the results here (default: metrics.json next to each checkpoint)")
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
    results = [measure_run(path, device, args.max_samples, args.nlr_steps, args.seed) for path in paths]
    print_table(results, [os.path.basename(os.path.dirname(os.path.abspath(path))) for path in paths])
    if args.json:
        outputs = {args.json: results[0] if len(paths) == 1 else dict(zip(paths, results))}
    else:
        outputs = {os.path.join(os.path.dirname(os.path.abspath(p)), "metrics.json"): r for p, r in zip(paths, results)}
    for path, result in outputs.items():
        try:
            common.atomic_write(path, json.dumps(result, indent=1))
        except OSError as e:
            common.fail(f"{'--json ' if args.json else ''}{path}: cannot write it ({e.strerror}); the table above is all there is")


if __name__ == "__main__":
    main()
