"""The redesigned studies (tolerance, causal, allocate) decide: claims and their verdicts against
hand computations, the threshold bits M* on enumerated curves, the grids' shapes from the
models' own profiles (each causal sweep moves one factor and holds the others), and the
combined outputs (claims.json, tolerance.csv, the README's table)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from refsim.studies import allocate, causal, run_study, tolerance, write_outputs
from refsim.studies.architectures import ARCHITECTURES, arch_fields
from refsim.studies.claims import CLAIM_KEYS, claim, finalize, fisher_z, power_at
from refsim.studies.dose import damage, monotone, threshold_bits
from refsim.studies.report import paper_table
from refsim.studies.training import profile_of

ROOT = Path(__file__).resolve().parents[2]


# ---- claims ----------------------------------------------------------------------------------

def _c(effect, se, sesoi=0.5, direction=-1, family="f", id="c", df=None):
    return claim(id, "s", effect=effect, se=se, sesoi=sesoi, direction=direction,
                 family=family, measure="m", design="d", n=10, units="u", df=df)


def test_claim_tests_against_hand_computations():
    c = _c(-0.3, 0.1, df=9)
    t = sps.t(9)
    assert c["p"] == pytest.approx(2 * t.sf(3.0), rel=1e-12)
    assert c["p_tost"] == pytest.approx(max(t.sf((-0.3 + 0.5) / 0.1),
                                            t.cdf((-0.3 - 0.5) / 0.1)), rel=1e-12)
    half = t.ppf(0.975) * 0.1
    assert c["ci"] == pytest.approx([-0.3 - half, -0.3 + half])
    crit = t.ppf(0.975)
    assert c["power_at_sesoi"] == pytest.approx(t.sf(crit - 5) + t.cdf(-crit - 5))
    assert power_at(0.0, 1.0) == pytest.approx(0.05)  # at no effect: alpha
    assert set(CLAIM_KEYS) <= set(c)


@pytest.mark.parametrize(("effect", "se", "direction", "verdict"), [
    (-2.0, 0.5, -1, "supported"),       # significant in the claimed direction, beyond SESOI
    (2.0, 0.5, -1, "contradicted"),     # significant against it
    (0.0, 0.1, -1, "equivalent"),       # inside +-0.5, significantly
    (-0.3, 0.05, -1, "equivalent"),     # a real effect, but smaller than the SESOI
    (-0.4, 0.4, -1, "undecided"),       # neither test decides
    (0.0, 0.1, 0, "supported"),         # no effect claimed, and none beyond the SESOI
    (2.0, 0.5, 0, "contradicted"),      # no effect claimed, a large one found
    (0.6, 0.6, 0, "undecided"),
])
def test_verdicts(effect, se, direction, verdict):
    assert finalize([_c(effect, se, direction=direction)])[0]["verdict"] == verdict


def test_holm_within_families_only():
    from statsmodels.stats.multitest import multipletests

    cs = [_c(-0.25, 0.1, id="a", family="x"), _c(-0.3, 0.1, id="b", family="x"),
          _c(-0.25, 0.1, id="c", family="y")]
    out = finalize(cs)
    want = multipletests([cs[0]["p"], cs[1]["p"]], method="holm")[1]
    assert [out[0]["p_holm"], out[1]["p_holm"]] == pytest.approx(list(want))
    assert out[2]["p_holm"] == pytest.approx(cs[2]["p"])  # alone in its family
    with pytest.raises(ValueError, match="unique"):
        finalize([cs[0], cs[0]])
    with pytest.raises(ValueError, match="sesoi"):
        _c(0.1, 0.1, sesoi=0)


def test_fisher_z():
    z, se = fisher_z(0.3, 100, 2)
    assert z == pytest.approx(math.atanh(0.3)) and se == pytest.approx(math.sqrt(1.06 / 95))


# ---- the threshold -----------------------------------------------------------------------------

@pytest.mark.parametrize(("damages", "want"), [
    ([3.0, 1.0, 0.2, 0.1, 0.0], (1.625, "")),       # crosses 0.5 between 1 and 2 bits
    ([0.4, 0.3, 0.2, 0.1, 0.0], (0.0, "low")),      # tolerates every dose
    ([9.0, 8.0, 7.0, 6.0, 5.0], (5.0, "high")),     # needs more than the largest
    ([math.inf, 0.1, 0.0, 0.0, 0.0], (1.0, "")),    # diverged at 0 bits
    ([2.0, 0.1, 0.9, 0.1, 0.0], (1.5 / 1.9, "")),   # the first crossing counts
    ([0.5, 0.0, 0.0, 0.0, 0.0], (0.0, "")),         # exactly tau: crossed at 0, not censored
])
def test_threshold_bits(damages, want):
    got = threshold_bits([0, 1, 2, 3, 4], damages, 0.5)
    assert got[1] == want[1] and got[0] == pytest.approx(want[0])
    assert math.isnan(threshold_bits([0, 1], [math.nan, 0.0], 0.5)[0])


def test_dose_area_caps_each_run():
    """A diverged run and one that blew up to 1e33 seed-sd both count as the cap."""
    cap = tolerance.DAMAGE_CAP
    assert tolerance.dose_area([math.inf, 1e33, 0.5, -1.0]) == pytest.approx(
        (2 * cap + 0.5 - 1.0) / 4)
    assert tolerance.dose_area([0.25, 0.75]) == 0.5


def test_operand_doses_name_their_formats():
    from refsim.studies.dose import dose_name, dose_spec

    p = {**tolerance.STANDARD}
    assert [dose_name(m, p) for m in p["doses"]] == ["int2", "int3", "int4", "int5", "int6"]
    spec = dose_spec("operands", 3, p)
    assert spec["scaling"] == "tensor" and spec["a"]["fmt"] == spec["b"]["fmt"] == "int3"
    flt = dose_spec("operands", 2, {**p, "operand_family": "float"})
    assert "scaling" not in flt and flt["a"]["fmt"] == "e5m2"
    assert dose_name(7, p, "accumulator") == "e8m7"


def test_damage_and_monotone():
    assert damage(1.5, 1.0, 0.25) == 2.0 and damage(math.nan, 1.0, 0.25) == math.inf
    assert math.isnan(damage(1.0, 1.0, 0.0))
    assert monotone([0, 1, 2], [3.0, 1.0, 1.0]) and not monotone([0, 1, 2], [3.0, 1.0, 2.0])


# ---- the grids ---------------------------------------------------------------------------------

def test_standard_tolerance_grid_meets_the_issue():
    p = tolerance.STANDARD
    gemms = [g for a in p["architectures"] for g in tolerance.gemm_rows(p, a)]
    assert len(gemms) >= 130 and len(p["architectures"]) >= 6
    assert p["doses"] == [2, 3, 4, 5, 6] and p["operand_family"] == "int"
    assert len({(g["arch"], g["layer"], g["role"]) for g in gemms}) == len(gemms)
    # the architectures break the K-depth aliasing: within the MLPs K falls and rises with depth
    for arch, sign in (("mlp-down", -1), ("mlp-up", 1)):
        fwd = [g for g in gemms if g["arch"] == arch and g["role"] == "forward"][1:]
        ks = [g["k"] for g in fwd]
        assert np.sign(sps.spearmanr(range(len(ks)), ks).statistic) == sign


@pytest.mark.parametrize("sweep", list(causal.SWEEPS))
def test_each_causal_sweep_moves_one_factor(sweep):
    """From the profile of each sweep point: the swept factor changes, the others do not."""
    p = {**causal.STANDARD, "sweeps": [sweep]}
    rows = []
    for _, _, over, layer, value in causal.sweeps(p):
        prof = profile_of({**arch_fields("mlp-down", 0, 4, over)})
        r = prof.row(layer, causal.SWEEPS[sweep]["role"])
        rows.append((value, r.k, (r.uses_a, r.uses_b), r.depth_input))
    factor = causal.SWEEPS[sweep]["factor"]
    ks = [r[1] for r in rows]
    uses = [r[2] for r in rows]
    depths = [r[3] for r in rows]
    if factor == "K":
        assert ks == [r[0] for r in rows] and len(set(uses)) == 1 and len(set(depths)) == 1
    elif factor == "F":
        assert len(set(ks)) == 1 and len(set(uses)) == len(rows) and len(set(depths)) == 1
        assert all(r[0] in u for r, u in zip(rows, uses, strict=True))  # the swept use count
    else:
        assert len(set(ks)) == 1 and len(set(uses)) == 1 and depths == sorted(set(depths))


def test_architectures_build():
    for name in ARCHITECTURES:
        prof = profile_of(arch_fields(name, 0, 4))
        assert len({r.layer for r in prof}) >= 3, name


# ---- outputs ---------------------------------------------------------------------------------

TINY = {
    "tolerance": {"architectures": ["mlp-down", "mlp-up"], "seeds": [0, 1],
                  "noise_seeds": [0, 1, 2], "doses": [2, 6], "steps": 3,
                  "layers": ["fc1", "fc2", "fc6"]},
    "causal": {"sweeps": ["K/forward", "D/forward"], "levels": [16, 64], "depths": [2, 3],
               "seeds": [0, 1], "noise_seeds": [0, 1], "doses": [2, 6], "steps": 3},
    "allocate": {"architectures": ["mlp-down"], "seeds": [0, 1], "steps": 3,
                 "random_draws": 1},
}


def test_outputs_end_to_end(tmp_path):
    docs = [run_study(name, tmp_path / name, mode="quick", overrides=over, plots=False,
                      cache_dir=tmp_path / "cache") for name, over in TINY.items()]
    write_outputs(tmp_path, docs, 1.0)
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert isinstance(claims, list) and claims
    ids = {c["claim"] for c in claims}
    assert {"cross-gemm/k/threshold/test_loss", "cross-gemm/k/area/test_loss",
            "causal/K/forward/threshold", "causal/D/forward/area",
            "allocation/factor vs U/test_loss"} <= ids
    for c in claims:
        assert set(CLAIM_KEYS) <= set(c)
        assert c["verdict"] in ("supported", "contradicted", "equivalent", "undecided")
    with (tmp_path / "tolerance.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(len(tolerance.gemm_rows({**tolerance.QUICK, **TINY["tolerance"]},
                                                    a)) for a in ("mlp-down", "mlp-up"))
    for key in ("model", "layer", "role", "k", "frequency", "depth",
                "threshold_bits_test_loss", "damage_test_loss_int2", "damage_test_loss_int6"):
        assert key in rows[0]
    report = (tmp_path / "report.md").read_text()
    assert "## Claims and verdicts" in report
    # every study checks that its baselines end on a plateau, and says so in its section
    for doc, keys in zip(docs, (["mlp-down", "mlp-up"], None, ["mlp-down"]), strict=True):
        plateaus = doc["summary"]["plateau"]
        assert keys is None or sorted(plateaus) == keys
        assert all(set(pl) >= {"mean_change_sd", "plateau"} for pl in plateaus.values())
    for doc in docs[1:]:
        assert "Plateau: " in doc["section"] and "Baseline test accuracy" in doc["section"]
    assert "\n".join(paper_table(claims)) in report
    # every run of one GEMM pairs with the baseline of its seed: same training fields
    tol = docs[0]
    assert {r["lever"] for r in tol["rows"]} == {"baseline", "operands"}


def test_allocation_identical_policies_trained_once():
    p = {**allocate.QUICK, "architectures": ["mlp-deep"]}
    pl = allocate.plans(p, 0, "mlp-deep")
    groups = allocate._groups(pl)
    assert sum(len(g) for g in groups.values()) == len(pl)
    for members in groups.values():
        assert all(pl[m] == pl[members[0]] for m in members)
    # every layer of mlp-deep reduces over K = 64: K's ranks tie, the earlier layer first, so
    # A+ is D+ and A- is D- there, and each pair is trained once
    assert pl["A+"] == pl["D+"] and pl["A-"] == pl["D-"]
    assert any({"A+", "D+"} <= set(g) for g in groups.values())


def test_readme_table_comes_from_claims_json():
    path = ROOT / "docs" / "results" / "claims.json"
    if not path.is_file():
        pytest.skip("docs/results/claims.json is written by `make study`; not present yet")
    table = "\n".join(paper_table(json.loads(path.read_text())))
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "README's table must be paper_table(docs/results/claims.json)"
    assert re.search(r"\| claim \(Shen, Lai & Zhang 2024\) \| verdicts \|", readme)


def test_allocation_caps_a_diverged_run_instead_of_dropping_it():
    """A policy run that diverged (NaN loss) or blew up stays in the pairs, as the cap."""
    p = {**allocate.QUICK, "architectures": ["mlp-down"], "seeds": [0, 1, 2],
         "policies": ["factor", "U"], "random_draws": 0}
    configs = allocate.grid(p)
    loss = {0: 1.0, 1: 1.2, 2: 0.8}  # baselines: seed sd 0.2
    results = []
    for c in configs:
        seed, pol = c["train"]["seed"], c["policy"]
        v = loss[seed] + (0.0 if pol == "baseline" else 0.1 if pol == "U" else 0.2)
        if pol == "factor" and seed == 1:
            v = math.nan  # diverged
        if pol == "factor" and seed == 2:
            v = 1e30  # blew up, finite
        results.append({"test_loss": v, "train_loss_auc": v, "test_accuracy": 0.5})
    _, summary, _ = allocate.analyze(p, configs, results)
    c = summary["comparisons"]["test_loss"]["factor vs U"]
    cap = tolerance.DAMAGE_CAP
    # damages: U 0.5 on every seed; factor 1.0, cap, cap
    assert c["n"] == 3
    assert c["mean_diff"] == pytest.approx(((1.0 - 0.5) + 2 * (cap - 0.5)) / 3)


def test_allocation_stratifies_by_architecture():
    """Architectures that differ from one another are not seed noise: the standard error comes
    from the seeds within each architecture, the estimate weighs every architecture the same."""
    within = {"a": [1.0, 1.2, 0.8, 1.0], "b": [5.0, 5.1, 4.9, 5.0, 5.2, 4.8]}
    c = allocate._stratified(within)
    assert c["mean_diff"] == pytest.approx((1.0 + 5.0) / 2)
    var = {a: np.var(d, ddof=1) / len(d) for a, d in within.items()}
    assert c["se"] == pytest.approx(math.sqrt(sum(var.values())) / 2)
    assert c["df"] == pytest.approx(sum(var.values()) ** 2
                                    / (var["a"] ** 2 / 3 + var["b"] ** 2 / 5))
    assert c["between_sd"] == pytest.approx(np.std([1.0, 5.0], ddof=1))
    assert c["n"] == 10 and c["per_arch"]["b"]["n"] == 6
    pooled = np.std(within["a"] + within["b"], ddof=1) / math.sqrt(10)
    assert c["se"] < pooled / 10  # pooling would count the 4 seed-sd between them as noise
    nan = allocate._stratified({"a": [1.0, math.nan, 2.0], "b": [math.nan]})
    assert nan["n"] == 2 and list(nan["per_arch"]) == ["a"]


def test_plateau_text_names_the_baselines_that_are_not():
    pl = {"a": tolerance.plateau([[1.0, 0.5, 0.40, 0.40]], 0.1),
          "b": tolerance.plateau([[1.0, 0.8, 0.60, 0.40]], 0.1)}
    assert pl["a"]["plateau"] and not pl["b"]["plateau"]
    text = tolerance.plateau_text(pl, {"a": [0.9, 0.95], "b": [0.5, 0.6]}, "variants")
    assert text.startswith("Plateau: 1 of 2 variants end on a plateau")
    assert "not on a plateau: b" in text and "Baseline test accuracy 50.0-95.0%" in text
