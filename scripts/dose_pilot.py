"""Pilot for a tolerance dose ladder: how many GEMMs each candidate operand dose damages.

Trains each architecture's baseline over `--noise-seeds` seeds and, for seed 0, one run per
(GEMM, candidate dose) with only that GEMM's operands cast to the candidate format (per-tensor
scaling, RNE, saturating, fp32 accumulation) and every other product in float32; prints, per
architecture, measure and dose, the median damage (seed-sd units, paired with seed 0's
baseline) and how many GEMMs it damages by more than 1 seed-sd. This is how the published
tolerance grid's int2..int6 ladder was chosen (refsim.studies.dose).

    python scripts/dose_pilot.py mlp-down transformer-1 --formats int2 int3 int4 e3m0 e2m1
"""

from __future__ import annotations

import argparse
import math
import statistics

from refsim.studies.architectures import arch_fields
from refsim.studies.cache import Cache
from refsim.studies.executor import run_grid
from refsim.studies.tolerance import QUICK, gemm_rows
from refsim.studies.training import low_plan, operand_spec, train_run

MEASURES = ("test_loss", "train_loss_auc")


def run(cfg: dict) -> dict:
    return train_run({"train": cfg["train"], "plan": cfg["plan"]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("architectures", nargs="+")
    ap.add_argument("--formats", nargs="+", default=["int2", "int3", "int4"])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--noise-seeds", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=None, help="run cache folder (default: none)")
    args = ap.parse_args()
    cfgs = []
    for arch in args.architectures:
        cfgs += [{"arch": arch, "dose": "", "seed": s, "train": arch_fields(arch, s, args.steps),
                  "plan": {"preset": "numpy"}} for s in range(args.noise_seeds)]
        for g in gemm_rows({**QUICK, "steps": args.steps, "arch_overrides": {}}, arch):
            cfgs += [{"arch": arch, "dose": f, "seed": 0,
                      "train": arch_fields(arch, 0, args.steps),
                      "plan": low_plan([(g["layer"], g["role"])],
                                       operand_spec(f, "rne", scaling="tensor"), "numpy")}
                     for f in args.formats]
    results, _ = run_grid(run, cfgs, study="dose-pilot", version=1, cache=Cache(args.cache),
                          workers=args.workers)
    for arch in args.architectures:
        mine = [(c, r) for c, r in zip(cfgs, results, strict=True) if c["arch"] == arch]
        for k in MEASURES:
            base = [r[k] for c, r in mine if not c["dose"]]
            sd, b0 = statistics.stdev(base), base[0]
            for f in args.formats:
                dmg = [(r[k] - b0) / sd if math.isfinite(r[k]) else math.inf
                       for c, r in mine if c["dose"] == f]
                print(f"{arch} {k} {f}: median damage {statistics.median(dmg):.2f} seed-sd, "
                      f"> 1 seed-sd in {sum(d > 1 for d in dmg)} of {len(dmg)} GEMMs")


if __name__ == "__main__":
    main()
