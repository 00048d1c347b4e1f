"""metrics.py: every measure against a closed form or an independent computation (never against
itself), the theory of the SSLPM paper (Theorem 3.2, Example 3.1, Corollaries 3.3 and 3.5), tracking,
and the report CLI end to end on a short shapes run."""
import json
import math

import pytest
import torch
import torch.nn as nn

import metrics as M
from conftest import run_script


def orthonormal_columns(n, d, seed=0):
    """(n, d) with centred, orthonormal columns: every sample statistic is exact, not just close."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(a - a.mean(0))
    return q


def gaussian_pairs(n, rhos, seed=0):
    """x_k, y_k standard normal with corr(x_k, y_k) = rho_k, independent across k."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(rhos), generator=g, dtype=torch.float64)
    e = torch.randn(n, len(rhos), generator=g, dtype=torch.float64)
    rho = torch.tensor(rhos, dtype=torch.float64)
    return x, rho * x + (1 - rho ** 2).sqrt() * e


# ------------------------------------------------------------------------------------ redundancy
def test_example_3_1_lr_one_and_aac_closed_form():
    # SSLPM paper Example 3.1: X_1..X_{d-1} uncorrelated, X_d = (X_1 + ... + X_{d-1}) / sqrt(d - 1).
    # Orthonormal columns make the sample correlations exact: AAC = sqrt(d - 1) / C(d, 2) (eq. 8).
    for d in (4, 7):
        x = orthonormal_columns(3000, d - 1, seed=d) * math.sqrt(3000)
        x = torch.cat([x, x.sum(1, keepdim=True) / math.sqrt(d - 1)], 1)
        assert M.average_absolute_correlation(x) == pytest.approx(math.sqrt(d - 1) / math.comb(d, 2), rel=1e-9)
        lr, per_feature = M.linear_redundancy(x)
        assert lr > 0.999 and per_feature.min() > 0.999  # every variable is a linear function of the others


def test_corollary_3_5_counterexample():
    # X, Y ~ N(0, 1), Z = (X^2 - Y^2) / 2: no linear redundancy, but Z is a function of (X, Y).
    # Paper eq. 37 says NLR = 1; only Z is predictable (X and Y are known up to their sign from
    # the other two, E[X | Y, Z] = 0), so NLR = (0 + 0 + 1) / 3.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4000, generator=g), torch.randn(4000, generator=g)
    f = torch.stack([x, y, (x ** 2 - y ** 2) / 2], 1)
    assert M.average_absolute_correlation(f) < 0.05
    assert M.linear_redundancy(f)[1].abs().max() < 0.02
    nlr, per_feature = M.nonlinear_redundancy(f, fraction=1.0, steps=400)
    assert per_feature[2] > 0.95 and per_feature[:2].abs().max() < 0.05
    assert nlr == pytest.approx(1 / 3, abs=0.05)


def test_independent_features_have_no_redundancy():
    # Corollary 3.3: 0 = AAC = sqrt(LR) = sqrt(NLR) for independent variables (up to sampling noise;
    # the MLP's held-out error on pure noise is slightly above 1, so NLR is slightly below 0)
    x = torch.randn(3000, 6, generator=torch.Generator().manual_seed(1))
    assert M.average_absolute_correlation(x) < 0.03
    assert abs(M.average_correlation(x)) < 0.02
    assert abs(M.linear_redundancy(x)[0]) < 0.01
    assert -0.1 < M.nonlinear_redundancy(x, fraction=1.0, steps=300)[0] < 0.02


def test_theorem_3_2_ordering_on_random_correlated_features():
    g = torch.Generator().manual_seed(2)
    x = torch.relu(torch.randn(4000, 8, generator=g) @ torch.randn(8, 8, generator=g))
    aac = M.average_absolute_correlation(x)
    lr, lr_j = M.linear_redundancy(x)
    nlr, nlr_j = M.nonlinear_redundancy(x, fraction=1.0, steps=400)
    assert 0 < aac <= math.sqrt(lr) <= math.sqrt(nlr) + 0.02 <= 1.02
    c = M.correlation_matrix(x).abs().fill_diagonal_(0)
    assert (c.sum(0) / 7 <= lr_j.sqrt() + 1e-9).all()  # Lemma 3.1 per feature: AAC_j <= sqrt(LR_j)


def test_linear_redundancy_of_correlated_pairs():
    # x2 = rho x1 + noise: the best linear predictor of either from the other explains rho^2
    x, y = gaussian_pairs(20000, [0.8], seed=3)
    lr, per_feature = M.linear_redundancy(torch.cat([x, y], 1))
    assert per_feature.tolist() == pytest.approx([0.64, 0.64], abs=0.02)


def test_block_inverse_ridge_matches_per_target_solves():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    fit, ev = x[:200], x[200:]
    ridges = (1e-3, 0.5, 20.0)
    mse = M.ridge_heldout_mse(fit.T @ fit / 200, ev.T @ ev / 100, ridges)
    for r, lam in enumerate(ridges):
        for j in range(12):
            others = [i for i in range(12) if i != j]
            a, b = fit[:, others], fit[:, j]
            coef = torch.linalg.solve(a.T @ a / 200 + lam * torch.eye(11, dtype=torch.float64), a.T @ b / 200)
            direct = (ev[:, others] @ coef - ev[:, j]).pow(2).mean()
            assert mse[r, j].item() == pytest.approx(direct.item(), rel=1e-9)


def test_fraction_draws_targets_and_marks_the_rest_nan():
    x = torch.randn(500, 20, generator=torch.Generator().manual_seed(5))
    lr, per_feature = M.linear_redundancy(x, fraction=0.25)
    assert (~per_feature.isnan()).sum() == 5 and lr == pytest.approx(per_feature.nanmean().item())
    nlr, nlr_j = M.nonlinear_redundancy(x, fraction=0.25, steps=5)
    assert ((~nlr_j.isnan()) == (~per_feature.isnan())).all()  # same targets for the same seed


# -------------------------------------------------------------------------------------- spectra
def known_spectrum(n, s, seed=0):
    """X = U diag(s) V^T (n, d) with chosen singular values s, U's first column the constant 1/sqrt(n):
    uncentred, the singular values are s; centred (the mean removed) they are s[1:] and a 0, so every
    spectral measure has one closed form per convention and a change of convention fails a test."""
    g = torch.Generator().manual_seed(seed)
    d = len(s)
    rest = torch.randn(n, d - 1, generator=g, dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.cat([torch.ones(n, 1, dtype=torch.float64), rest - rest.mean(0)], 1))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return u * torch.tensor(s, dtype=torch.float64) @ v.T


def entropy_rank(s):  # exp(H(s / |s|_1)) by hand
    p = [x / sum(s) for x in s if x > 0]
    return math.exp(-sum(q * math.log(q) for q in p))


@pytest.mark.parametrize("s", [[5.0, 3.0, 2.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0], [9.0, 0.1, 0.1, 0.1]])
def test_spectral_measures_against_closed_forms_both_conventions(s):
    x = known_spectrum(200, s)
    assert M.singular_values(x).tolist() == pytest.approx(sorted(s, reverse=True), rel=1e-9)
    assert M.singular_values(x, center=True).tolist() == pytest.approx(sorted(s[1:], reverse=True) + [0.0], abs=1e-9)
    assert M.effective_rank(x) == pytest.approx(entropy_rank(s), rel=1e-9)                 # uncentred: AdaDim H(R)
    assert M.effective_rank_centered(x) == pytest.approx(entropy_rank(s[1:]), rel=1e-9)    # centred: its own name
    p = [v / sum(s) + 1e-7 for v in s]
    assert M.rankme(x) == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-9)  # uncentred, eps
    lam = sorted([v * v / 199 for v in s[1:]], reverse=True) + [0.0]                      # covariance eigenvalues
    assert M.covariance_eigenvalues(x).tolist() == pytest.approx(lam, abs=1e-12)
    assert M.eigenvalue_count(x, tau=0.01) == sum(v / sum(lam) > 0.01 for v in lam)
    top = max(1, math.floor(0.3 * len(lam) + 1e-9))
    assert M.explained_variance_ratio(x, top=0.3) == pytest.approx(sum(lam[:top]) / sum(lam), rel=1e-9)
    assert M.numerical_rank(x, tau=0.9) == sum(v >= 0.9 for v in s)                        # uncentred, absolute


def test_effective_rank_reads_a_collapse_as_collapsed():
    torch.manual_seed(0)
    assert M.effective_rank(torch.ones(100, 8)) == pytest.approx(1.0)            # every row the same: rank 1
    assert M.effective_rank(torch.ones(100, 8) + 1e-6 * torch.randn(100, 8)) < 1.001   # plus a little noise
    assert M.effective_rank_centered(torch.ones(100, 8)) == 0.0                   # no spread around the mean
    one = torch.randn(100, 1) @ torch.randn(1, 8)
    assert M.effective_rank(one) == pytest.approx(1, rel=1e-6) and M.rankme(one) == pytest.approx(1, abs=1e-3)
    assert M.effective_rank(torch.zeros(100, 8)) == 0.0 and M.rankme(torch.zeros(100, 8)) == 0.0
    assert M.effective_rank(torch.randn(1, 8)) == pytest.approx(1.0)               # a single sample
    q = orthonormal_columns(200, 6)
    assert M.effective_rank(3 * q) == pytest.approx(6, rel=1e-9) and M.rankme(3 * q) == pytest.approx(6, rel=1e-5)


def test_numerical_rank_counts_singular_values_at_or_above_tau():
    u = torch.linalg.qr(torch.randn(8, 5, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(6, 5, dtype=torch.float64))[0]
    w = u @ torch.diag(torch.tensor([5.0, 1.5, 0.02, 0.005, 0.0], dtype=torch.float64)) @ v.T  # (8, 6)
    assert [M.numerical_rank(w, tau) for tau in (0.001, 0.01, 1.0, 10.0)] == [4, 3, 2, 0]
    assert M.numerical_rank(w.T.float(), 0.01) == 3


def test_eigenvalue_count_and_explained_variance():
    lam = torch.tensor([50.0, 30.0, 15.0, 4.0, 0.5, 0.5], dtype=torch.float64)  # covariance eigenvalues
    x = orthonormal_columns(100, 6) * (lam * 99).sqrt()
    assert M.eigenvalue_count(x, tau=0.01) == 4 and M.eigenvalue_count(x, tau=0.2) == 2
    assert M.explained_variance_ratio(x, top=0.3) == pytest.approx(0.5)    # floor(1.8) = 1 eigenvalue
    assert M.explained_variance_ratio(x, top=0.5) == pytest.approx(0.95)   # 3 eigenvalues
    # N is d, the number of covariance eigenvalues, also with fewer samples than dimensions (zeros added)
    few = orthonormal_columns(4, 3) @ torch.randn(3, 10, dtype=torch.float64)   # rank 3 in 10 dimensions
    assert len(M.covariance_eigenvalues(few)) == 10 and M.covariance_eigenvalues(few)[3:].abs().max() < 1e-12
    assert M.explained_variance_ratio(few, top=0.3) == pytest.approx(1.0)        # 3 of 10 hold all of it


def test_von_neumann_and_matrix_entropy():
    lam = torch.tensor([3.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    a = q @ torch.diag(lam) @ q.T
    p = lam[:3] / lam.sum()
    assert M.von_neumann_entropy(a) == pytest.approx(-(p * p.log()).sum().item(), rel=1e-9)
    assert M.matrix_entropy(a) == pytest.approx(sum(-l * math.log(l) + l for l in (3.0, 1.0, 0.5)), rel=1e-9)
    assert M.von_neumann_entropy(torch.eye(5)) == pytest.approx(math.log(5))
    assert M.matrix_entropy(torch.eye(5)) == pytest.approx(5.0)


# ---------------------------------------------------------------------------------- information
def test_logdet_entropy_is_the_gaussian_entropy_for_eps_zero():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(50000, 5, generator=g, dtype=torch.float64) @ a
    sample = torch.distributions.MultivariateNormal(torch.zeros(5, dtype=torch.float64), torch.cov(x.T))
    assert M.logdet_entropy(x, eps=0) == pytest.approx(sample.entropy().item(), rel=1e-10)
    truth = torch.distributions.MultivariateNormal(torch.zeros(5, dtype=torch.float64), a.T @ a)
    assert M.logdet_entropy(x, eps=0) == pytest.approx(truth.entropy().item(), abs=0.03)


def test_ldmi_closed_forms():
    rhos = [0.9, 0.5, 0.0]
    x, y = gaussian_pairs(40000, rhos, seed=7)
    expected = -0.5 * sum(math.log(1 - r ** 2) for r in rhos)
    assert M.ld_mutual_information(x, y, eps=0) == pytest.approx(expected, abs=0.02)
    assert M.ld_mutual_information(x, y, eps=0, symmetric=False) == pytest.approx(
        M.ld_mutual_information(y, x, eps=0, symmetric=False), rel=1e-9)   # eqs. 3.5 and 3.6 agree at eps 0
    q = orthonormal_columns(500, 6)                                   # exactly uncorrelated x and y
    for eps in (0.0, 1e-3, 0.1):
        assert M.ld_mutual_information(q[:, :3], q[:, 3:] * 5, eps=eps) == pytest.approx(0, abs=1e-10)
    g = torch.Generator().manual_seed(8)
    for _ in range(5):  # thesis Lemma 1: >= 0
        a = torch.randn(200, 4, generator=g)
        assert M.ld_mutual_information(a[:, :2], a[:, 2:] + a[:, :2] * torch.rand(1, generator=g), eps=1e-2) >= 0


def test_gaussian_mutual_information_schur_forms_agree():
    g = torch.Generator().manual_seed(9)
    r = torch.randn(1000, 5, generator=g, dtype=torch.float64)
    z = r[:, :3] @ torch.randn(3, 3, generator=g, dtype=torch.float64) + torch.randn(1000, 3, generator=g, dtype=torch.float64)
    i_z, i_r = M.gaussian_mutual_information(r, z, both=True)
    c = torch.cov(torch.cat([r, z], 1).T)
    direct = 0.5 * (torch.logdet(c[:5, :5]) + torch.logdet(c[5:, 5:]) - torch.logdet(c)).item()
    assert i_z == pytest.approx(i_r, rel=1e-9) and i_z == pytest.approx(direct, rel=1e-9)
    assert M.ld_mutual_information(r, z, eps=0) == pytest.approx(direct, rel=1e-9)
    x, y = gaussian_pairs(40000, [0.6], seed=10)
    assert M.gaussian_mutual_information(x, y) == pytest.approx(-0.5 * math.log(1 - 0.36), abs=0.01)


def explicit_renyi_mi(r, z):  # AdaDim paper A.6 with the n x n matrices, eigenvalues, no shortcuts
    r, z = torch.nn.functional.normalize(r.double(), dim=1), torch.nn.functional.normalize(z.double(), dim=1)
    n = len(r)

    def h(a):
        lam = torch.linalg.eigvalsh(a / a.trace())
        return -math.log((lam ** 2).sum().item())
    return h(r @ r.T / n) + h(z @ z.T / n) - h((r @ r.T) * (z @ z.T) / n)


def test_renyi_entropy_and_mutual_information():
    n = 8
    rows = orthonormal_columns(12, n).T * 3                        # n orthogonal rows of equal norm
    assert M.renyi_entropy(rows @ rows.T) == pytest.approx(math.log(n))
    assert M.renyi2_entropy(rows) == pytest.approx(math.log(n))
    one = torch.ones(n, 1) @ torch.randn(1, 5)
    assert M.renyi_entropy(one @ one.T) == pytest.approx(0, abs=1e-12)
    lam = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)      # order 3 from known eigenvalues
    q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    assert M.renyi_entropy(q @ torch.diag(lam) @ q.T, alpha=3) == pytest.approx(math.log((lam ** 3).sum()) / -2)
    # I(A; A) = H(A) where A o A is A again: k equal clusters of identical points, orthogonal across
    clusters = torch.eye(4).repeat_interleave(5, 0)                 # 20 points, 4 clusters
    assert M.renyi_mutual_information(clusters, clusters) == pytest.approx(math.log(4))
    assert M.renyi_mutual_information(rows, rows) == pytest.approx(math.log(n))
    g = torch.Generator().manual_seed(11)
    r, z = torch.randn(300, 7, generator=g), torch.randn(300, 5, generator=g)
    z = z + r[:, :5]
    expected = explicit_renyi_mi(r, z)
    assert M.renyi_mutual_information(r, z) == pytest.approx(expected, rel=1e-6)
    assert M.renyi_mutual_information(r, z, chunk=37) == pytest.approx(expected, rel=1e-6)
    assert M.renyi_mutual_information(r, z, alpha=2.0000001) == pytest.approx(expected, rel=1e-4)  # n x n path
    assert M.renyi_mutual_information(r, z) <= M.renyi2_entropy(torch.nn.functional.normalize(r, dim=1)) + 1e-9


def test_pairwise_distance_entropy_limits():
    sigma, d = 0.5, 3
    base = d / 2 * math.log(2 * math.pi * math.e * sigma ** 2)
    same = torch.ones(50, d)
    assert M.pairwise_distance_entropy(same, sigma) == pytest.approx(base)        # total collapse
    far = torch.eye(d) * 1000                                       # d points far apart
    assert M.pairwise_distance_entropy(far, sigma) == pytest.approx(base + math.log(d))
    x = torch.randn(200, d, generator=torch.Generator().manual_seed(12))
    assert base <= M.pairwise_distance_entropy(x, sigma, "bhattacharyya") <= M.pairwise_distance_entropy(x, sigma)


# ------------------------------------------------------------------------------------- geometry
def test_uniformity_on_the_circle_and_for_identical_points():
    n, t = 1000, 2
    angle = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    circle = torch.stack([angle.cos(), angle.sin()], 1) * 7       # normalised inside
    # exact finite-n mean over pairs: each point sees the others at chord^2 = 2 - 2 cos(2 pi k / n)
    exact = math.log(sum(math.exp(-t * (2 - 2 * math.cos(2 * math.pi * k / n))) for k in range(1, n)) / (n - 1))
    assert M.uniformity(circle, t) == pytest.approx(exact, rel=1e-9)
    # n -> infinity: log E_theta exp(-4 + 4 cos theta) = -4 + log I0(4) ~ -1.575. The n-point average
    # INCLUDING i = j equals e^-4 I0(4) to machine precision (periodic trapezoid rule), so dropping
    # the n self-pairs gives the finite-n value in closed form, about 4 / n below the limit
    i0 = sum((4 / 2) ** (2 * k) / math.factorial(k) ** 2 for k in range(40))  # modified Bessel I0(4)
    assert M.uniformity(circle, t) == pytest.approx(math.log((n * math.exp(-4) * i0 - 1) / (n - 1)), rel=1e-9)
    assert M.uniformity(circle, t) == pytest.approx(-4 + math.log(i0), abs=4 / n)
    assert M.uniformity(torch.ones(10, 3, dtype=torch.float64)) == pytest.approx(0, abs=1e-12)
    assert M.uniformity(torch.ones(10, 3)) == pytest.approx(0, abs=1e-6)      # float32 in, float32 math


def test_alignment():
    x = torch.randn(20, 4)
    assert M.alignment(x, 3 * x) == pytest.approx(0, abs=1e-12) and M.alignment(x, -x) == pytest.approx(4)


def infonce_loop(f1, f2, beta):  # arXiv 2205.06926 eq. 1 one anchor at a time, with D_-i and its entropy
    f1 = [v / v.norm() for v in f1.double()]
    f2 = [v / v.norm() for v in f2.double()]
    n, loss, entropy = len(f1), 0.0, 0.0
    for i in range(n):
        negatives = [float(f1[i] @ f[j]) for f in (f1, f2) for j in range(n) if j != i]
        z = sum(math.exp(beta * s) for s in negatives)
        loss += -beta * float(f1[i] @ f2[i]) + math.log(z)
        entropy += -sum(math.exp(beta * s) / z * math.log(math.exp(beta * s) / z) for s in negatives)
    return loss / n, entropy / n


def test_infonce_proposition_c1_and_upper_bound():
    g = torch.Generator().manual_seed(13)
    for beta in (0.5, 2.0, 10.0):
        f1 = torch.randn(9, 4, generator=g)
        f2 = f1 + 0.5 * torch.randn(9, 4, generator=g)
        t = M.infonce_terms(f1, f2, beta)
        loss, entropy = infonce_loop(f1, f2, beta)
        assert t["infonce"] == pytest.approx(loss, rel=1e-9)
        assert t["entropy_term"] == pytest.approx(entropy, rel=1e-9)
        assert t["alignment_term"] + t["repulsion_term"] + t["entropy_term"] == pytest.approx(loss, rel=1e-9)
        assert t["upper"] >= t["infonce"] - 1e-12
    # one-hot, identical views: negatives at similarity 0, so InfoNCE = upper bound = log(2(N-1)) - beta
    t = M.infonce_terms(torch.eye(6), torch.eye(6), 2.0)
    assert t["infonce"] == pytest.approx(math.log(10) - 2) and t["upper"] == pytest.approx(math.log(10) - 2)
    assert t["invariance"] == pytest.approx(-1) and t["repulsion"] == pytest.approx(0)


def test_unexplained_variance():
    g = torch.Generator().manual_seed(14)
    w = torch.randn(10, 3, generator=g, dtype=torch.float64)
    inside = torch.randn(50, 3, generator=g, dtype=torch.float64) @ w.T
    q = torch.linalg.qr(torch.cat([w, torch.randn(10, 7, generator=g, dtype=torch.float64)], 1))[0]
    outside = torch.randn(50, 7, generator=g, dtype=torch.float64) @ q[:, 3:].T
    assert M.unexplained_variance(w, inside) == pytest.approx(0, abs=1e-12)
    assert M.unexplained_variance(w, outside) == pytest.approx(1, abs=1e-12)
    mixed = inside / inside.norm() + outside / outside.norm()      # half the variance each
    assert M.unexplained_variance(w, mixed) == pytest.approx(0.5, rel=1e-9)


def test_nearest_negatives_and_label_sharing():
    h1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    h2 = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, -0.1]])
    # anchor 0: h2[1] (cos 0.0995) beats h1[1] (0); anchor 1: h2[0]; anchor 2: h1[1] (0) beats h2[1] (-0.0995)
    nearest, distance = M.nearest_negatives(h1, h2)
    assert nearest.tolist() == [4, 3, 1]                            # indices into cat([h1, h2])
    star = torch.nn.functional.normalize(h2[1], dim=0)
    assert distance[0].item() == pytest.approx((h1[0] - star).norm().item())
    assert distance[2].item() == pytest.approx(math.sqrt(2))
    # chosen in the projector's space when given: there f makes h1[2] the nearest to image 0
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05]])
    assert M.nearest_negatives(h1, h2, f, -f)[0][0].item() == 2
    assert M.label_sharing(torch.tensor([7, 3, 3]), nearest) == pytest.approx(1 / 3)  # only image 2's


# ------------------------------------------------------------------------------- report, tracking
class Data:  # the part of common.Data that extraction needs
    def normalize(self, x):
        return x.float() / 255 - 0.5


def test_track_on_a_tiny_model():
    import common
    torch.manual_seed(0)
    backbone = common.backbone("resnet18", width=2, image_size=16)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    base = {f"{m}_{v}" for m in ("effective_rank", "aac", "avg_corr", "eigenvalue_count", "explained_variance_top30")
            for v in "RZ"} | {"renyi_mi_RZ", "std_Z", "uniformity_Z", "spectrum_Z"}
    two_views = {"infonce", "infonce_upper", "alignment_Z"}
    for projector, linear in ((nn.Linear(16, 8, bias=False), True), (common.projector([16, 32, 8]), False)):
        for policy in (None, "small"):
            backbone.train(), projector.train()
            out = M.track(backbone, projector, images, Data(), torch.device("cpu"), policy)
            expected = base | ({"projector_rank", "projector_effective_rank"} if linear else set())
            expected |= two_views if policy else set()
            expected |= {"unexplained_variance"} if linear and policy else set()
            assert set(out) - {"undefined"} == expected, (linear, policy)
            assert all(v is not None and all(math.isfinite(x) for x in finite_values(v)) for v in out.values()
                       if not isinstance(v, dict))
            assert backbone.training and projector.training               # modes restored
            r, z = M.extract(backbone, projector, images, Data(), torch.device("cpu"))
            assert out["spectrum_Z"] == pytest.approx(M.covariance_eigenvalues(z).tolist(), rel=1e-6, abs=1e-12)
            assert out["effective_rank_Z"] == pytest.approx(M.effective_rank(z), rel=1e-6)
            if policy:
                assert out["infonce"] <= out["infonce_upper"]
    assert out["effective_rank_R"] <= 16 and out["effective_rank_Z"] <= 8


def test_report_keys_on_synthetic_features():
    g = torch.Generator().manual_seed(15)
    r = torch.relu(torch.randn(300, 12, generator=g))
    w = torch.randn(6, 12, generator=g)
    views = (r, r + 0.1 * torch.randn(300, 12, generator=g), r @ w.T, (r + 0.1) @ w.T)
    out = M.report(r, r @ w.T, torch.randint(0, 3, (300,), generator=g), views=views, projector_weight=w, nlr_steps=20)
    for key in ("effective_rank_R", "lr_Z", "nlr_R", "renyi_mi_RZ", "infonce", "upper", "label_sharing",
                "unexplained_variance", "projector_rank", "uniformity_Z"):
        assert math.isfinite(out[key]), key
    assert out["projector_rank"] == 6 and out["unexplained_variance"] < 1


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run_script("simclr.py", "--dataset", "shapes", "--width", "4", "--batch-size", "64", "--train-subset", "256",
               "--epochs", "1", "--warmup-epochs", "0", "--projector", "linear", "--proj-dim", "16",
               "--out", out, "--name", "r1")
    return out / "r1" / "last.pt"


def test_cli_prints_every_measure(checkpoint):
    result = run_script("metrics.py", checkpoint, "--max-samples", "400", "--nlr-steps", "100")
    lines = result.stdout.strip().splitlines()
    lines = [line for line in lines[[l.split()[0] for l in lines].index("measure") + 1:] if " is undefined: " not in line]
    wrote = checkpoint.parent / "metrics-last.json"  # named after last.pt, and said so last
    assert lines.pop() == f"wrote {wrote}"
    table = {line.split()[0]: line.split()[1] for line in lines}
    saved = json.load(open(wrote))
    assert set(table) == set(saved) - {"undefined"}
    for key in ("effective_rank_R", "rankme_Z", "eigenvalue_count_R", "explained_variance_top30_Z",
                "von_neumann_entropy_R", "matrix_entropy_Z", "renyi_entropy_R", "logdet_entropy_Z",
                "pairwise_entropy_R", "std_Z", "uniformity_Z", "aac_R", "avg_corr_R", "lr_R", "nlr_R",
                "renyi_mi_RZ", "gaussian_mi_RZ", "ldmi_RZ", "nearest_label_sharing", "projector_rank",
                "infonce", "upper", "invariance", "repulsion", "alignment_Z", "label_sharing",
                "unexplained_variance", "ldmi_Z1Z2", "nearest_negative_distance"):
        assert isinstance(saved[key], (int, float)) and math.isfinite(saved[key]), key
    assert saved["n_samples"] == 400 and saved["method"] == "simclr"
    # Theorem 3.2 on real features: 0 <= AAC <= sqrt(LR) <= sqrt(NLR) <= 1, up to estimation noise
    assert 0 <= saved["aac_R"] <= math.sqrt(max(saved["lr_R"], 0)) + 0.05
    assert math.sqrt(max(saved["lr_R"], 0)) <= math.sqrt(max(saved["nlr_R"], 0)) + 0.15 and saved["nlr_R"] <= 1
    assert saved["upper"] >= saved["infonce"]


def test_cli_compare_and_json(checkpoint, tmp_path, capsys):  # in-process: no second interpreter start
    other = tmp_path / "r2" / "last.pt"
    other.parent.mkdir()
    other.write_bytes(checkpoint.read_bytes())
    out = tmp_path / "both.json"
    M.main(["--compare", str(checkpoint), str(other), "--max-samples", "200", "--nlr-steps", "0", "--json", str(out)])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows.pop() == ["wrote", str(out)]
    rows = rows[[r[0] for r in rows].index("measure"):]
    assert rows[0][:3] == ["measure", "r1", "r2"]
    assert all(row[1] == row[2] for row in rows[1:])               # same weights, same numbers
    saved = json.load(open(out))
    assert list(saved) == [str(checkpoint), str(other)] and saved[str(other)]["n_samples"] == 200


def one_line_error(stderr, *needles):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_cli_bad_input_subprocess(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    result = run_script("metrics.py", tmp_path / "junk.pt", check=False)
    assert result.returncode != 0
    one_line_error(result.stderr, "junk.pt", "corrupt")             # one line, no traceback


@pytest.mark.parametrize("case,needles", [
    ("missing", ["nope.pt", "no such file"]),
    ("other kind", ["other.pt", "not a checkpoint"]),
    ("unknown method", ["other.pt", "not a checkpoint"]),
    ("max samples 0", ["--max-samples", "positive"]),
    ("no checkpoint", ["checkpoint"]),
    ("bad device", ["--device", "cpu"]),
    ("negative nlr steps", ["--nlr-steps", "0 (skip NLR)"]),
])
def test_cli_bad_input(tmp_path, capsys, checkpoint, case, needles):
    if case == "other kind":
        torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    if case == "unknown method":
        ckpt = torch.load(checkpoint, weights_only=True)
        torch.save({**ckpt, "args": {**ckpt["args"], "method": "os"}}, tmp_path / "other.pt")
    argv = {"missing": [str(tmp_path / "nope.pt")], "other kind": [str(tmp_path / "other.pt")],
            "unknown method": [str(tmp_path / "other.pt")], "max samples 0": [str(checkpoint), "--max-samples", "0"],
            "no checkpoint": [], "bad device": [str(checkpoint), "--device", "tpu"],
            "negative nlr steps": [str(checkpoint), "--nlr-steps", "-1"]}[case]
    with pytest.raises(SystemExit) as exit:
        M.main(argv)
    code = exit.value.code
    assert code != 0 and code is not None
    one_line_error(code if isinstance(code, str) else capsys.readouterr().err, *needles)  # fail() or argparse


def test_a_run_saved_under_the_old_projector_flag_is_rebuilt(checkpoint, tmp_path):
    # runs saved before --proj-layers hold simclr's --projector mlp|linear and corinfomax's sizes A-A-B
    ckpt = torch.load(checkpoint, weights_only=True)
    old = {k: v for k, v in ckpt["args"].items() if k != "proj_layers"}
    torch.save({**ckpt, "args": {**old, "projector": "linear"}}, tmp_path / "simclr.pt")
    _, args, model, _ = M.load_run(tmp_path / "simclr.pt", torch.device("cpu"))
    assert args.proj_layers == 1 and "projector" not in vars(args) and isinstance(model.projector, nn.Linear)
    import corinfomax
    new = corinfomax.get_args(["--width", "4", "--train-subset", "256", "--image-size", "32", "--proj-layers", "3",
                               "--proj-hidden", "16", "--proj-dim", "8"])
    model = corinfomax.Model(new)
    old = {**{k: v for k, v in vars(new).items() if not k.startswith("proj_")}, "projector": "16-16-8"}
    torch.save({"epoch": 1, "args": old, "state": {"model": model.state_dict()}}, tmp_path / "corinfomax.pt")
    _, args, rebuilt, _ = M.load_run(tmp_path / "corinfomax.pt", torch.device("cpu"))
    assert (args.proj_layers, args.proj_hidden, args.proj_dim) == (3, 16, 8) and "projector" not in vars(args)
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in model.state_dict().items())


def test_track_every_logs_the_measures_from_a_method_script(run, tmp_path):
    """--track-every K (each method's epoch-end call of metrics.track) adds the measures to log.jsonl every K epochs,
    computed on the same test images each time; a linear projector adds its numerical rank."""
    run("simclr.py", "--width", "4", "--batch-size", "64", "--train-subset", "256", "--epochs", "2",
        "--warmup-epochs", "0", "--track-every", "2", "--projector", "linear", "--proj-dim", "16",
        "--out", tmp_path, "--name", "t")
    rows = [json.loads(line) for line in open(tmp_path / "t" / "log.jsonl")]
    keys = {"effective_rank_R", "effective_rank_Z", "renyi_mi_RZ", "aac_R", "std_Z", "uniformity_Z", "projector_rank"}
    assert not keys & set(rows[1]) and keys <= set(rows[2])  # epoch 1: not tracked; epoch 2: tracked
    assert all(math.isfinite(rows[2][k]) for k in keys)
    assert 1 <= rows[2]["projector_rank"] <= 16 and 1 <= rows[2]["effective_rank_Z"] <= 16


# ---------------------------------------------------------------------- degenerate features
DEGENERATE = {  # the features a collapsed or tiny run gives
    "constant": lambda: torch.ones(50, 6),
    "zeros": lambda: torch.zeros(50, 6),
    "rank-1": lambda: torch.randn(50, 1, generator=torch.Generator().manual_seed(0)) @ torch.ones(1, 6),
    "one sample": lambda: torch.randn(1, 6, generator=torch.Generator().manual_seed(1)),
    "fewer samples than dimensions": lambda: torch.randn(4, 6, generator=torch.Generator().manual_seed(2)),
    "duplicated rows": lambda: torch.randn(5, 6, generator=torch.Generator().manual_seed(3)).repeat(10, 1),
}
MEASURES = {  # name -> function of one feature matrix x (n, 6)
    "singular_values": M.singular_values, "effective_rank": M.effective_rank,
    "effective_rank_centered": M.effective_rank_centered, "rankme": M.rankme,
    "numerical_rank": M.numerical_rank, "covariance_eigenvalues": M.covariance_eigenvalues,
    "eigenvalue_count": M.eigenvalue_count, "explained_variance_ratio": M.explained_variance_ratio,
    "von_neumann_entropy": lambda x: M.von_neumann_entropy(x.T @ x), "matrix_entropy": lambda x: M.matrix_entropy(x.T @ x),
    "renyi_entropy": lambda x: M.renyi_entropy(x @ x.T), "renyi2_entropy": M.renyi2_entropy,
    "renyi_mutual_information": lambda x: M.renyi_mutual_information(x, x[:, :3]),
    "logdet_entropy": M.logdet_entropy, "ld_mutual_information": lambda x: M.ld_mutual_information(x[:, :3], x[:, 3:]),
    "gaussian_mutual_information": lambda x: M.gaussian_mutual_information(x[:, :3], x[:, 3:]),
    "pairwise_distance_entropy": M.pairwise_distance_entropy, "alignment": lambda x: M.alignment(x, x),
    "uniformity": M.uniformity, "infonce_terms": lambda x: M.infonce_terms(x, x),
    "nearest_negatives": lambda x: M.nearest_negatives(x, x),
    "average_absolute_correlation": M.average_absolute_correlation, "average_correlation": M.average_correlation,
    "linear_redundancy": M.linear_redundancy, "nonlinear_redundancy": lambda x: M.nonlinear_redundancy(x, steps=3),
    "unexplained_variance": lambda x: M.unexplained_variance(torch.eye(6)[:, :2], x),
    "zscore": M.zscore, "correlation_matrix": M.correlation_matrix,
}


def finite_values(value):
    if isinstance(value, dict):
        return [v for x in value.values() for v in finite_values(x)]
    if isinstance(value, (tuple, list)):
        return [v for x in value for v in finite_values(x)]
    if torch.is_tensor(value):
        return value.double().flatten().tolist()
    return [float(value)]


@pytest.mark.parametrize("kind", list(DEGENERATE))
@pytest.mark.parametrize("name", list(MEASURES))
def test_every_measure_is_defined_or_refuses_clearly_on_degenerate_features(name, kind):
    """A value that is a number (NaN only where a docstring promises it: the per-feature vectors of the
    redundancies mark non-targets NaN), or a ValueError that says why; never a NaN result, an infinity,
    a ZeroDivisionError or a LinAlgError."""
    x = DEGENERATE[kind]()
    try:
        value = MEASURES[name](x)
    except ValueError as e:
        assert str(e), name
        return
    if name in ("linear_redundancy", "nonlinear_redundancy"):
        value = value[0]  # (mean, per-feature vector with NaN for features that were not targets)
    assert all(math.isfinite(v) for v in finite_values(value)), (name, kind, value)


@pytest.mark.parametrize("kind,name,expected", [
    ("constant", "effective_rank", 1.0), ("rank-1", "effective_rank", 1.0), ("zeros", "effective_rank", 0.0),
    ("constant", "rankme", 1.0), ("zeros", "rankme", 0.0), ("constant", "effective_rank_centered", 0.0),
    ("constant", "uniformity", 0.0), ("zeros", "uniformity", 0.0), ("duplicated rows", "effective_rank", None),
    ("constant", "eigenvalue_count", 0), ("zeros", "numerical_rank", 0), ("constant", "numerical_rank", 1),
    ("constant", "alignment", 0.0), ("constant", "renyi2_entropy", 0.0),
])
def test_a_collapse_reads_as_collapsed(kind, name, expected):
    value = MEASURES[name](DEGENERATE[kind]())
    if expected is None:  # duplicated rows: the same spectrum as the 5 distinct rows
        assert value == pytest.approx(M.effective_rank(DEGENERATE[kind]()[:5]), rel=1e-6)
    else:
        assert value == pytest.approx(expected, abs=1e-4), (kind, name)


@pytest.mark.parametrize("kind,name", [("constant", "explained_variance_ratio"), ("constant", "average_absolute_correlation"),
                                       ("zeros", "renyi2_entropy"), ("one sample", "uniformity"),
                                       ("one sample", "covariance_eigenvalues"), ("constant", "linear_redundancy")])
def test_undefined_values_raise_a_clear_value_error(kind, name):
    with pytest.raises(ValueError, match=r"\w+ \w+"):
        MEASURES[name](DEGENERATE[kind]())


@pytest.mark.parametrize("kind", list(DEGENERATE))
def test_report_never_crashes_and_writes_valid_json(kind, tmp_path):
    import common
    x = DEGENERATE[kind]()
    views = (x, x, x[:, :4], x[:, :4])
    out = M.report(x, x[:, :4], labels=torch.zeros(len(x), dtype=torch.long), views=views,
                   projector_weight=torch.eye(6)[:4], nlr_steps=3)
    text = common.to_json(out)
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))  # NaN / Infinity refused
    for key, value in parsed.items():
        if value is None:
            assert parsed["undefined"][key], key  # every null says why
    assert parsed["effective_rank_R"] is not None
