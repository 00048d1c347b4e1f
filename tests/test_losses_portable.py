"""What the method files repeat on purpose stays the same in each. Every loss returns (loss, terms) and is a
pure function of the tensors it is given: copied alone (with the helpers it calls) into a scratch file whose
only imports are math and torch, it runs in a fresh interpreter that has neither this repository nor a process
group, and gives the values of the method file's own function; those are checked against the independent
loops of the method tests. AdaDim's copies of the VICReg and InfoNCE losses are letter for letter those of
vicreg.py and simclr.py. The six main() functions share one skeleton, apart from each method's listed lines."""
import ast
import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

import adadim
import barlow
import corinfomax
import simclr
import sslpm
import vicreg
from test_adadim import mi_eig
from test_barlow import barlow_loop
from test_simclr import nt_xent_loop
from test_vicreg import vicreg_loop

# what each file's loss needs, in the order of definition, and expressions to evaluate on shared inputs
LOSSES = {
    "simclr": (["nt_xent_loss"], ["nt_xent_loss(z1, z2, 0.3)[0]"]),
    "vicreg": (["off_diagonal", "vicreg_loss", "embedding_std"],
               ["vicreg_loss(z1, z2)[0]", "vicreg_loss(z1, z2, 1.0, 3.0, 0.5)[1]['covariance']",
                "embedding_std(z1, z2)"]),
    "barlow": (["off_diagonal", "batchnorm_standardize", "barlow_twins_loss", "embedding_std"],
               ["barlow_twins_loss(z1, z2)[0]", "barlow_twins_loss(z1, z2, 0.5)[1]['off_diagonal']"]),
    "corinfomax": (["ldmi", "CorInfoMaxLoss"],
                   ["corinfomax_two_steps(z1, z2)",
                    "ldmi(torch.eye(3).double(), torch.eye(3).double(), 0.5 * torch.eye(3).double())"]),
    "sslpm": (["standardize", "invariance_loss", "random_mask", "ridge_weights", "ridge_predictability_loss",
               "sslpm_loss"],
              ["sslpm_loss(z1, z2, mask, 0.3, 1.0)[0]",
               "sslpm_loss(z1, z2, mask, 0.3, 0.5, 'masked')[1]['prediction']"]),
    "adadim": (["off_diagonal", "vicreg_loss", "nt_xent_loss", "renyi_entropy", "renyi_mutual_information",
                "effective_rank", "adadim_loss"],
               ["adadim_loss(z1, z2, r1, r2, 0.3, 0.2, 0.1)[0]", "renyi_mutual_information(r1, z1)",
                "effective_rank(z1)"]),
}
TENSORS = """
torch.manual_seed(0)
z1, z2 = torch.randn(16, 8), torch.randn(16, 8) * 2 + 1
r1, r2 = torch.randn(16, 6), torch.randn(16, 6)
mask = torch.rand(32, 8) < 0.5
"""
INPUTS = TENSORS + """

def corinfomax_two_steps(z1, z2):  # the running estimates carry over from one call to the next
    loss = CorInfoMaxLoss(8, alpha=5.0, la_R=0.1, la_mu=0.1)
    loss(z1, z2)
    return loss(2 * z1, z2)[0] + loss.ldmi()
"""


def source_of(module, names):
    """The source of the named top-level functions / classes of a module, decorators included."""
    text = inspect.getsource(module)
    lines = text.splitlines()
    nodes = {n.name: n for n in ast.parse(text).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    out = []
    for name in names:
        node = nodes[name]
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        out.append("\n".join(lines[first - 1:node.end_lineno]))
    return "\n\n\n".join(out)


def evaluate_here(module, expressions):
    scope = dict(vars(module))
    exec(INPUTS, scope)
    return [float(eval(e, scope)) for e in expressions]


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_runs_alone_with_torch_only(name, tmp_path):
    module = {"simclr": simclr, "vicreg": vicreg, "barlow": barlow, "corinfomax": corinfomax, "sslpm": sslpm,
              "adadim": adadim}[name]
    names, expressions = LOSSES[name]
    script = "\n".join(["import math", "import torch", "import torch.nn as nn", "import torch.nn.functional as F",
                        "", "", source_of(module, names), INPUTS,
                        f"print(__import__('json').dumps([float(e) for e in [{', '.join(expressions)}]]))"])
    (tmp_path / "scratch.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run([sys.executable, "-I", "scratch.py"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    alone = json.loads(result.stdout)
    assert alone == evaluate_here(module, expressions)  # the same floats, bit for bit


def test_the_copied_losses_match_their_references():
    scope = {"torch": torch}
    exec(TENSORS, scope)
    z1, z2, r1, r2 = (scope[k] for k in ("z1", "z2", "r1", "r2"))
    assert simclr.nt_xent_loss(z1, z2, 0.3)[0].item() == pytest.approx(nt_xent_loop(z1, z2, 0.3), rel=1e-5)
    reference = vicreg_loop(z1, z2, 25.0, 25.0, 1.0)[0].item()
    assert vicreg.vicreg_loss(z1, z2)[0].item() == pytest.approx(reference, rel=1e-5)
    assert barlow.barlow_twins_loss(z1, z2)[0].item() == pytest.approx(barlow_loop(z1, z2, 0.0051)[0].item(), rel=1e-5)
    assert adadim.renyi_mutual_information(r1, z1).item() == pytest.approx(mi_eig(r1, z1), rel=1e-4)


def test_every_loss_returns_the_loss_and_its_terms():
    """One shape in every file: (loss, terms), a scalar and a dict of named scalars (empty for NT-Xent)."""
    torch.manual_seed(0)
    z1, z2, mask = torch.randn(16, 8), torch.randn(16, 8), torch.rand(32, 8) < 0.5
    predictor = sslpm.MLPPredictor(8, 1, "cpu", max_steps=2)
    outputs = {"simclr": simclr.nt_xent_loss(z1, z2), "vicreg": vicreg.vicreg_loss(z1, z2),
               "barlow": barlow.barlow_twins_loss(z1, z2), "corinfomax": corinfomax.CorInfoMaxLoss(8, 1.0)(z1, z2),
               "sslpm-rr": sslpm.sslpm_loss(z1, z2, mask, ridge=1.0),
               "sslpm-sgd": sslpm.sslpm_sgd_loss(z1, z2, mask, predictor, 1.0),
               "adadim": adadim.adadim_loss(z1, z2, z1[:, :6], z2[:, :6], 0.5, 0.1)}
    for name, output in outputs.items():
        assert isinstance(output, tuple) and len(output) == 2, name
        loss, terms = output
        assert loss.dim() == 0 and torch.isfinite(loss), name
        assert isinstance(terms, dict) and all(torch.as_tensor(v).dim() == 0 for v in terms.values()), name
        assert bool(terms) == (name != "simclr"), name


@pytest.mark.parametrize("name,origin", [("off_diagonal", vicreg), ("vicreg_loss", vicreg), ("nt_xent_loss", simclr)])
def test_adadim_copies_are_letter_for_letter(name, origin):
    assert source_of(adadim, [name]) == source_of(origin, [name])


def test_helpers_with_different_semantics_have_different_names():
    # barlow: biased variance + 1e-5 (BatchNorm); sslpm: unbiased std; metrics: population z-score
    import metrics
    assert not hasattr(barlow, "standardize") and hasattr(barlow, "batchnorm_standardize")
    assert hasattr(sslpm, "standardize") and not hasattr(metrics, "standardize") and hasattr(metrics, "zscore")


# ------------------------------------------------------------------ the main() every method file repeats
# The training loop is repeated in each method file on purpose (a reader sees the whole method in one file);
# so that the six copies cannot drift apart, each main() less its own lines below (line starts, after
# stripping indentation) must be the same skeleton, line for line and in order, as every other main().
OWN_LINES = {
    "simclr": ["loss, terms = nt_xent_loss(", "meter.add(loss=loss, **terms, probe_loss=probe_loss)"],
    "vicreg": ["loss, terms = vicreg_loss(", "meter.add(loss=loss, **terms, embedding_std=embedding_std(z1, z2),"],
    "barlow": ["loss, terms = barlow_twins_loss(", "loss = args.scale_loss * loss",
               "meter.add(loss=loss, **terms, embedding_std=embedding_std(z1, z2),"],
    "corinfomax": ["criterion = CorInfoMaxLoss(", "dtype=common.precise_dtype(device)).to(device)",
                   "state = dict(model=model, optimizer=optimizer, probe=probe, loss=",
                   "loss, terms = criterion(z1, z2)", "meter.add(loss=loss, **terms, ldmi=criterion.ldmi(),",
                   "# Figure 5.3", "eigenvalues = ", "run.finish(model.backbone, data, extra=", "common.print0("],
    "sslpm": ["if args.predictor == \"mlp\":", "common.precise_dtype(device))", "state[\"predictor\"] = predictor = MLPPredictor(",
              "args.predictor_steps, args.mask_fraction)", "mask = random_mask(",
              "if args.predictor == \"ridge\":", "try:", "loss, terms = sslpm_loss(", "except ValueError as e:",
              "common.fail(f\"--ridge", "else:  # mask is the validation mask", "loss, terms = sslpm_sgd_loss(",
              "meter.add(loss=loss, **terms, probe_loss=probe_loss)"],
    "adadim": ["model = Model(args)", "momentum = MomentumEncoder(", "model = common.prepare_model(model,",
               "if momentum:", "common.prepare_model(momentum.model", "schedule = AlphaSchedule(args)",
               "state = dict(model=model, optimizer=optimizer, probe=probe, alpha=schedule)",
               "state[\"momentum\"] = momentum.model", "schedule.start_epoch(", "args.alpha_batches, device))",
               "alpha, beta = schedule.alpha, schedule.beta", "constants = {k: torch.tensor(v)",
               "h2, z2 = net(x2)", "r1, r2 = common.gather(h1.float()), common.gather(h2.float())",
               "pairs = None", "with torch.no_grad(), common.autocast(device):",
               "(h1m, z1m), (h2m, z2m) = momentum.model(",
               "pairs = tuple(common.gather(t.float()) for t in (z1m, z2m, h1m, h2m))",
               "loss, terms = adadim_loss(", "momentum.update(model, step, steps)",
               "meter.add(loss=loss, **terms, probe_loss=probe_loss, **constants)"],
}
# lines that five of the six share, listed once: the sixth (named) writes its own instead
SHARED_BUT = {"model = common.prepare_model(Model(args), args, device)": "adadim",
              "state = dict(model=model, optimizer=optimizer, probe=probe)  # what last.pt holds":
                  "corinfomax adadim",
              "_, z2 = net(x2)": "adadim", "run.finish(model.backbone, data)": "corinfomax"}
PROGRESS = ("bar.set_postfix(", "img_s=f")  # what the progress bar shows may differ (AdaDim adds alpha)


def skeleton(name):
    text = inspect.getsource({"simclr": simclr, "vicreg": vicreg, "barlow": barlow, "corinfomax": corinfomax,
                              "sslpm": sslpm, "adadim": adadim}[name])
    node = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == "main")
    lines = [line.strip() for line in text.splitlines()[node.lineno - 1:node.end_lineno] if line.strip()]
    lines = [line for line in lines if not line.startswith(PROGRESS)]
    own = [line for line in lines if line.startswith(tuple(OWN_LINES[name]))]
    shared = [line for line in lines if line in SHARED_BUT]
    return [line for line in lines if line not in own and line not in shared], own, shared


def test_the_six_mains_share_one_skeleton():
    reference, _, _ = skeleton("vicreg")
    assert len(reference) >= 40  # the skeleton is most of main(), not what is left after excusing everything
    for name in OWN_LINES:
        lines, own, shared = skeleton(name)
        assert lines == reference, (name, [line for line in lines if line not in reference],
                                    [line for line in reference if line not in lines])
        assert own, name  # every method has its own loss call
        # a line of SHARED_BUT is in every main() but the ones it names
        assert sorted(shared) == sorted(k for k, v in SHARED_BUT.items() if name not in v.split()), name
