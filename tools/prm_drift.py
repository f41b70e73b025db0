"""How far the rePIRL PRM moves from its start, with and without `prm.init_l2` (issue 24, cause 4; docs/trainer.md).

    PYTHONPATH=. .venv/bin/python tools/prm_drift.py ITERATIONS PRM_LR INIT_L2     # e.g. 20 1e-3 100

Runs configs/tiny.yaml for ITERATIONS iterations twice: init_l2 1e-9 (logs `prm_drift`, pulls nothing) and INIT_L2,
and prints the reward scale, ||phi - phi_0|| and the ESS every few iterations. Runs go to /tmp/prm_drift/.
"""

import json
import sys
from pathlib import Path

import yaml

from trainer.config import parse_config
from trainer.train_cli import run_training

base = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text())
iters, lr, coef_on = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
for coef in (1e-9, coef_on):
    cfg = parse_config({**base, "name": f"drift-{coef:g}", "out_dir": "/tmp/prm_drift", "iterations": iters,
                        "eval_problems": 0, "checkpoint_every": 1000, "threads": 1,
                        "prm": {"lr": lr, "init_l2": coef}})
    run_training(cfg)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows[:: max(1, iters // 5)] + [rows[-1]]:
        print(f"init_l2={coef:g} lr={lr:g} iter {r['iter']:3d} expert_rbar {r['expert_rbar']:.4f} "
              f"negative_rbar {r['negative_rbar']:.4f} margin {r['margin']:.4f} drift {r.get('prm_drift', 0):.4f} "
              f"ess_frac {r['ess_frac']:.3f} ess {r['ess']:.2f} ess_raw {r['ess_raw']:.2f}", flush=True)
