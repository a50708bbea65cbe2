"""The standard grids: their shapes meet the numbers docs/studies.md promises (computed from the
models' factor profiles), the statistics behind every verdict (partial correlation, power, the
verdict rule) agree with hand computations and decide synthetic data with a known effect the
right way, the new model's gradients are right, and a tiny standard-shaped grid runs end to end
(also on a Dask LocalCluster with two worker processes, with the serial run's numbers)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from refsim.nn import Context, Tensor, preset
from refsim.nn.data import markov_entropy, markov_table, sequence_task
from refsim.nn.models import ResNet
from refsim.studies import allocate, run_study, sensitivity
from refsim.studies import stats as st
from refsim.studies.report import validate

# ---- the grid's shape ---------------------------------------------------------------------------


def test_standard_sensitivity_grid_meets_the_issue():
    p = sensitivity.STANDARD
    units = sensitivity.units(p)  # from refsim.factors.profile of each model as trained
    gemms = {(u["model"], u["layer"], u["role"]) for u in units}
    assert len(gemms) == len(units) >= 40
    assert len({u["model"] for u in units}) >= 3
    assert {"mlp", "cnn", "transformer"} <= set(p["models"])
    ks = [u["k"] for u in units]
    fs = [u["frequency"] for u in units]
    assert max(ks) / min(ks) >= 100 and max(fs) / min(fs) >= 100  # two decades each
    assert len(p["mlp_hidden"]) + 1 >= 5  # a deeper MLP: 5-6 linear layers
    assert len(set(p["mlp_hidden"])) == len(p["mlp_hidden"])  # of varied widths
    assert len(set(p["seeds"])) >= 5 and p["steps"] >= 300
    assert set(p["levers"]) == {"operands", "accumulator"}
    assert p["transformer_task"] == "markov"  # a task that does not saturate
    configs = sensitivity.grid(p)
    # Paired: every treatment has the baseline of its model and seed, with the same training.
    base = {(c["model"], c["train"]["seed"]): c["train"] for c in configs if c["lever"] is None}
    assert all(c["train"] == base[(c["model"], c["train"]["seed"])] for c in configs)
    assert len(configs) == len(p["seeds"]) * (len(p["models"]) + len(p["levers"]) * len(units))


def test_standard_allocation_grid_meets_the_issue():
    p = allocate.STANDARD
    assert len(p["architectures"]) >= 6 and len(set(p["seeds"])) >= 8 and p["sesoi"] == 0.5
    assert set(p["policies"]) == {"factor", "A+", "A-", "F+", "F-", "D+", "D-", "U"}
    assert p["random_draws"] >= 1
    configs = allocate.grid(p)
    bits: dict[str, set] = {}
    for c in configs:
        if c["policy"] != "baseline":
            bits.setdefault(c["arch"], set()).update(
                (pol, tuple(sorted(c["bits"].values()))) for pol in c["policies"]
                if pol != "U")
    assert set(bits) == set(p["architectures"])
    for arch, policies in bits.items():  # every policy hands out the same widths
        assert len({w for _, w in policies}) == 1, arch
        assert len(next(iter(policies))[1]) >= 6, arch  # at least 6 layers
    trained = [(c["arch"], c["train"]["seed"], tuple(sorted(c["bits"].items())))
               for c in configs if c["policy"] != "baseline"]
    assert len(trained) == len(set(trained))  # identical policies are trained once


# ---- statistics ---------------------------------------------------------------------------------


def test_partial_spearman_against_a_hand_computation():
    rng = np.random.default_rng(3)
    z = rng.standard_normal(40)
    x = z + rng.standard_normal(40)
    y = -z + 0.5 * x + rng.standard_normal(40)
    rx, ry, rz = (sps.rankdata(v) for v in (x, y, z))
    r = np.corrcoef([rx, ry, rz])
    hand = (r[0, 1] - r[0, 2] * r[1, 2]) / math.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    t = hand * math.sqrt((40 - 3) / (1 - hand ** 2))
    got = st.partial_spearman(x, y, [z])
    assert got["rho"] == pytest.approx(hand, rel=1e-10)
    assert got["p"] == pytest.approx(2 * sps.t.sf(abs(t), 40 - 3), rel=1e-8)
    assert got["n"] == 40 and got["covariates"] == 1
    plain = st.partial_spearman(x, y)
    assert plain["rho"] == pytest.approx(sps.spearmanr(x, y).statistic)
    assert math.isnan(st.partial_spearman(x, x + z, [x + z])["rho"])  # nothing left of y


def test_power_against_hand_computations():
    # Fisher z with Spearman's variance 1.06 / (n - 3 - covariates)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    for n, k in ((60, 1), (20, 0), (200, 2)):
        assert st.detectable_rho(n, k) == pytest.approx(
            math.tanh(z * math.sqrt(1.06 / (n - 3 - k))), rel=1e-4)  # + the far tail
    assert math.isnan(st.detectable_rho(4, 1))
    # A paired t-test of 15 pairs detects d = 0.78 (the usual table value)
    assert st.detectable_diff(1.0, 15) == pytest.approx(0.778, abs=0.002)
    assert st.detectable_diff(2.0, 15) == pytest.approx(2 * st.detectable_diff(1.0, 15))
    assert st.reliability([0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0]) == 1.0
    assert st.reliability([0.0, 1.0, 2.0, 3.0], [5.0] * 4) == 0.0


@pytest.mark.parametrize(("estimate", "p", "detectable", "sign", "verdict"), [
    (-0.6, 0.001, 0.3, -1, True),    # found, in the claimed direction
    (+0.6, 0.001, 0.3, -1, False),   # found, the other way: contradicted
    (-0.1, 0.4, 0.3, -1, False),     # nothing found by a grid that sees small effects
    (-0.1, 0.4, 0.8, -1, None),      # nothing found by a grid that could not see one
    (0.05, 0.7, 0.3, 0, True),       # no-effect claim, powered
    (0.05, 0.7, 0.8, 0, None),       # no-effect claim, not powered
    (0.5, 0.01, 0.8, 0, False),      # no-effect claim, an effect found
])
def test_decide(estimate, p, detectable, sign, verdict):
    assert st.decide(estimate, p, detectable, 0.4, sign) is verdict


def _synthetic(n_gemms: int, effect: float, seeds: int = 5, spread: float = 1.0, seed: int = 0):
    """Sensitivity configs and results without training: each GEMM's damage (train_loss_auc) is
    `effect` * log10(K) plus a GEMM-specific part (sd `spread`) plus seed noise (sd 1)."""
    rng = np.random.default_rng(seed)
    models = ["m0", "m1"]
    p = {**sensitivity.QUICK, "models": models, "seeds": list(range(seeds)),
         "levers": ["operands"]}
    units = []
    for i in range(n_gemms):
        model = models[i % 2]
        units.append({"model": model, "layer": f"l{i}", "role": "forward",
                      "k": int(2 ** rng.uniform(3, 11)),
                      "frequency": float(2 ** rng.uniform(3, 10)),
                      "depth": i // 2 + 1, "rel_depth": (i // 2 + 1) / ((n_gemms + 1) // 2),
                      "own": rng.normal(0, spread)})
    configs, results = [], []
    for model in models:
        for s in range(seeds):
            level = rng.normal(10, 3)  # seeds differ a lot; pairs share it
            configs.append({"model": model, "lever": None, "layer": None, "role": None,
                            "train": {"seed": s}})
            results.append({"train_loss_auc": level, "test_loss_auc": level, "test_loss": level,
                            "test_accuracy": 0.5, "seconds": 1.0})
            for u in (u for u in units if u["model"] == model):
                d = effect * math.log10(u["k"]) + u["own"] + rng.normal(0, 1)
                configs.append({**{k: v for k, v in u.items() if k != "own"},
                                "lever": "operands", "train": {"seed": s}})
                results.append({"train_loss_auc": level + d, "test_loss_auc": level + d,
                                "test_loss": level + rng.normal(0, 1), "test_accuracy": 0.5,
                                "seconds": 1.0})
    return p, configs, results


def _verdicts(p, configs, results):
    _, summary, findings = sensitivity.analyze(p, configs, results)
    return {f["id"]: f for f in findings}, summary


def test_known_effect_is_supported():
    found, summary = _verdicts(*_synthetic(40, effect=-3.0))
    assert found["accumulation"]["supported"] is True
    assert summary["levers"]["operands"]["main"]["partial"]["k"]["rho"] < -0.5
    assert "power" in found["accumulation"]["evidence"]


def test_null_with_many_gemms_is_not_supported():
    found, summary = _verdicts(*_synthetic(300, effect=0.0, seed=1))
    det = summary["levers"]["operands"]["main"]["detectable"]["k"]
    assert det["true"] < 0.4  # the grid sees small correlations ...
    assert found["accumulation"]["supported"] is False  # ... and found none
    assert found["accumulation"]["power"]["detectable_rho"] == pytest.approx(det["true"])


def test_null_with_few_gemms_is_undecided():
    found, summary = _verdicts(*_synthetic(8, effect=0.0, seed=2))
    assert summary["levers"]["operands"]["main"]["detectable"]["k"]["true"] > 0.4
    assert found["accumulation"]["supported"] is None
    assert found["frequency"]["supported"] is None


def test_noise_only_damages_are_undecided():
    # Many GEMMs, but their damages are seed noise only: reliability ~ 0, nothing detectable.
    found, summary = _verdicts(*_synthetic(300, effect=0.0, spread=0.0, seeds=2, seed=3))
    assert summary["levers"]["operands"]["main"]["reliability"] < 0.3
    assert found["accumulation"]["supported"] is None


def test_mixed_model_recovers_a_slope():
    rng = np.random.default_rng(5)
    groups = np.repeat(["a", "b", "c", "d"], 50)
    x = rng.standard_normal(200)
    y = 0.8 * x + np.repeat(rng.normal(0, 2, 4), 50) + rng.normal(0, 0.5, 200)
    fit = st.mixed_model(y, {"x": x, "noise": rng.standard_normal(200)}, groups)
    slope = 0.8 * x.std()  # per factor sd
    assert fit["x"]["coef"] == pytest.approx(slope, abs=0.1) and fit["x"]["p"] < 1e-10
    assert fit["x"]["ci_low"] < fit["x"]["coef"] < fit["x"]["ci_high"]
    assert fit["noise"]["p"] > 0.01 and abs(fit["noise"]["coef"]) < 0.1
    assert math.isnan(st.mixed_model([1.0, 2.0], {"x": [1.0, 2.0]}, ["a", "b"])["x"]["coef"])


# ---- the new model and task ---------------------------------------------------------------------


def _torch_resnet(model: ResNet, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    f = torch.nn.functional
    sw, sb, rw, rb, *rest = params
    h = f.max_pool2d(f.relu(f.conv2d(x, sw, sb, padding=1)), 2)
    h = f.relu(f.conv2d(h, rw, rb))
    for i in range(len(model.blocks)):
        w1, b1, w2, b2 = rest[4 * i:4 * i + 4]
        h = f.relu(h + f.conv2d(f.relu(f.conv2d(h, w1, b1, padding=1)), w2, b2, padding=1))
    fw, fb = rest[-2:]
    return h.reshape(h.shape[0], -1) @ fw + fb


def test_resnet_gradients():
    model = ResNet(stem=4, width=3, blocks=1, image=4, seed=1)
    params = model.parameters()
    for prm in params:
        prm.data = prm.data.astype(np.float64)
    x = np.random.default_rng(2).uniform(0, 1, (2, 1, 4, 4)).astype(np.float32)
    weight = np.random.default_rng(9).standard_normal((2, 10))
    ctx = Context(preset("numpy"))

    def loss() -> Tensor:
        return (model(x, ctx) * Tensor(weight)).sum()

    loss().backward()
    ours = [prm.grad.copy() for prm in params]
    leaves = [torch.tensor(prm.data, requires_grad=True) for prm in params]
    t_loss = (_torch_resnet(model, torch.tensor(x, dtype=torch.float64), leaves)
              * torch.tensor(weight)).sum()
    t_loss.backward()
    assert float(loss().data) == pytest.approx(t_loss.item(), rel=1e-12)
    names = [name for name, _ in model.named_parameters()]
    for name, g, leaf in zip(names, ours, leaves, strict=True):
        np.testing.assert_allclose(g, leaf.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    h = 1e-6
    for name, prm, g in zip(names, params, ours, strict=True):
        flat = prm.data.reshape(-1)
        for j in range(flat.size):
            keep = flat[j]
            flat[j] = keep + h
            plus = float(loss().data)
            flat[j] = keep - h
            minus = float(loss().data)
            flat[j] = keep
            assert (plus - minus) / (2 * h) == pytest.approx(g.reshape(-1)[j], rel=1e-5,
                                                             abs=1e-7), (name, j)
    assert model.gemm_names() == ["stem", "reduce", "block1.conv1", "block1.conv2", "fc"]


def test_markov_task():
    split = sequence_task("markov", n_train=3000, n_test=10, length=6, vocab=4, seed=1)
    assert np.array_equal(split.x_train[:, 1:], split.y_train[:, :-1])
    assert split.mask_train[:, 0].sum() == 0 and split.mask_train[:, 1:].all()
    again = sequence_task("markov", n_train=3000, n_test=10, length=6, vocab=4, seed=1)
    assert np.array_equal(split.x_test, again.x_test)
    # The chain follows its table: the empirical next-token frequencies after (a, b) match.
    table = markov_table(4)
    seq = np.concatenate([split.x_train, split.y_train[:, -1:]], axis=1)
    a, b, c = seq[:, :-2].ravel(), seq[:, 1:-1].ravel(), seq[:, 2:].ravel()
    sel = (a == 1) & (b == 2)
    freq = np.bincount(c[sel], minlength=4) / sel.sum()
    assert np.abs(freq - table[1, 2]).max() < 0.05
    assert 0 < markov_entropy(16) < math.log(16)  # learnable, never to zero loss
    with pytest.raises(ValueError, match="markov needs length >= 3"):
        sequence_task("markov", length=2)


# ---- a tiny standard-shaped grid end to end -----------------------------------------------------

TINY_SENS = {"models": ["mlp", "resnet", "transformer"], "seeds": [0, 1], "steps": 3,
             "mlp_hidden": [8, 6], "transformer_train": 64, "transformer_length": 4,
             "transformer_vocab": 4, "layers": ["fc1", "stem", "head"]}
TINY_ALLOC = {"architectures": ["mlp-down", "transformer-1"], "seeds": [0, 1], "steps": 3,
              "random_draws": 1, "policies": ["factor", "U", "A+", "A-"]}


def test_tiny_standard_grid_end_to_end(tmp_path):
    pytest.importorskip("matplotlib", reason="the plots extra (matplotlib) draws the PNGs")
    doc = run_study("sensitivity", tmp_path / "s", mode="standard", overrides=TINY_SENS,
                    cache_dir=tmp_path / "cache", command="refsim study sensitivity --standard")
    assert validate(doc) == [] and doc["mode"] == "standard" and doc["quick"] is False
    assert doc["params"]["levers"] == ["operands", "accumulator"]
    assert doc["params"]["rest"] == "numpy"
    on_disk = json.loads((tmp_path / "s" / "results.json").read_text())
    prov = on_disk["provenance"]
    assert prov["command"] == "refsim study sensitivity --standard"
    assert prov["wall_seconds"] > 0 and prov["machine"] and prov["date"]
    ids = {f["id"]: f for f in doc["findings"]}
    assert {"accumulation", "frequency", "depth", "accumulation-acc", "frequency-acc",
            "depth-acc"} <= set(ids)
    for f in ids.values():
        assert f["supported"] in (True, False, None) and "power" in f
    levers = {r["lever"] for r in doc["rows"]}
    assert levers == {"operands", "accumulator"}
    assert all(math.isfinite(r["z_train_loss_auc"]) for r in doc["rows"])
    assert (tmp_path / "s" / "sensitivity.png").read_bytes().startswith(b"\x89PNG")
    alloc = run_study("allocate", tmp_path / "a", mode="standard", overrides=TINY_ALLOC,
                      cache_dir=tmp_path / "cache", plots=False)
    assert validate(alloc) == []
    assert {f["id"] for f in alloc["findings"]} >= {"allocation/factor vs U/test_loss",
                                                    "allocation/A- vs A+/test_loss"}
    assert all("power" in f for f in alloc["findings"])


def test_tiny_standard_grid_on_a_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip(
        "distributed", reason="dask[distributed] is an optional extra (pip install "
        "'refsim[dask]'); without it the Dask executor cannot be exercised")
    tiny = {**TINY_SENS, "models": ["mlp", "transformer"], "seeds": [0],
            "layers": ["fc1", "head"]}
    serial = run_study("sensitivity", tmp_path / "serial", mode="standard", overrides=tiny,
                       use_cache=False, plots=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        dask = run_study("sensitivity", tmp_path / "dask", mode="standard", overrides=tiny,
                         use_cache=False, plots=False, executor="dask",
                         scheduler=cluster.scheduler_address)
    assert dask["grid"]["computed"] == dask["grid"]["runs"] == serial["grid"]["runs"]
    assert json.dumps(dask["rows"]) == json.dumps(serial["rows"])
