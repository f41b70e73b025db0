"""The report's calibration section: per PRM, the expected calibration error (ECE, 10 equal-width bins) and a
reliability diagram of its calibrated `p_correct` on the held-out test problems' policy samples (the best-of-N
samples, in-distribution at the highest temperature; step labels from the task's step checker), next to the raw
step reward read as a probability (itself for probability formats, its sigmoid otherwise). The mapping was fitted by
the trainer (trainer/calibration.py) on dev problems, so nothing here was fitted on these steps."""

from __future__ import annotations

from pathlib import Path

from repirl.artifacts import active_calibration
from trainer.calibration import ece, raw_as_probability, reliability, step_labels
from trainer.evaluation.bestofn import IN_DIST


def section(scorers: dict, settings: dict, log=print) -> dict:
    """settings: the best-of-N settings with their scored samples (`_samples`, step_rewards per PRM name)."""
    key = next((k for k in sorted(settings, key=lambda k: -settings[k]["temperature"])
                if settings[k].get("task_key") == IN_DIST), None)
    if key is None:
        return {"skipped": "no in-distribution samples"}
    samples = [s for ss in settings[key]["_samples"] for s in ss if s.steps]
    out = {"setting": key, "solutions": len(samples), "prms": {}}
    for name, scorer in scorers.items():
        raws, labels = [], []
        for s in samples:
            rs = s.step_rewards.get(name) or []
            raws += rs
            labels += step_labels(len(rs), s.first_wrong_step)
        if not raws:
            continue
        raw_p = raw_as_probability(raws, scorer.config.format)
        row = {"steps": len(raws), "error_free_share": sum(labels) / len(labels), "ece_raw": ece(raw_p, labels),
               "bins_raw": reliability(raw_p, labels), "calibrated": False}
        cal = active_calibration(scorer.config)
        if cal is not None:
            p = cal.p_correct_all(raws)
            row.update(calibrated=True, a=cal.a, b=cal.b, fit_steps=cal.n_steps, fit_data=cal.data,
                       dev_ece=cal.ece, ece=ece(p, labels), bins=reliability(p, labels))
        out["prms"][name] = row
        log(f"calibration {key} / {name}: ECE raw {row['ece_raw']:.3f}"
            + (f", calibrated {row['ece']:.3f}" if cal is not None else " (no calibration in prm.json)"))
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()[:60]


def plot(sec: dict, plot_dir: Path) -> dict[str, Path]:
    """One reliability diagram per PRM: observed error-free frequency per bin against the mean predicted
    probability (the diagonal is perfect calibration), raw-as-probability and calibrated, with step counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for name, row in (sec.get("prms") or {}).items():
        fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        series = [("raw reward as probability", row["bins_raw"], row["ece_raw"], "tab:gray")]
        if row.get("calibrated"):
            series.append(("calibrated p_correct", row["bins"], row["ece"], "tab:blue"))
        width = 0.1 / len(series)
        for k, (label, bins, e, colour) in enumerate(series):
            full = [b for b in bins if b["count"]]
            ax.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], "o-", color=colour,
                    label=f"{label} (ECE {e:.3f})")
            hist.bar([b["lo"] + width * (k + 0.5) for b in bins], [b["count"] for b in bins], width, color=colour)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("observed share error-free")
        ax.set_title(f"{name}\n{row['steps']} steps, {sec['setting']}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        hist.set_xlabel("predicted probability (bin)")
        hist.set_ylabel("steps")
        fig.tight_layout()
        path = plot_dir / f"calibration_{_slug(name)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out[f"calibration:{name}"] = path
    return out


def markdown(sec: dict, plots: dict) -> list[str]:
    lines = ["## Calibrated step scores", "",
             "`p_correct` = sigmoid(a * raw step reward + b), fitted by the trainer (Platt scaling) on "
             "checker-labelled steps of policy samples on dev problems and stored in prm.json; the service returns "
             "it beside the raw "
             "reward. A step's label: 1 while the solution is error-free through that step, 0 from its first wrong "
             "step on. ECE: 10 equal-width bins, weighted by steps. Measured on the held-out test problems' samples "
             f"({sec.get('setting', 'n/a')}, {sec.get('solutions', 0)} solutions), which the fit never saw; \"raw\" "
             "reads the raw reward as a probability (sigmoid of it; probability formats as is).", ""]
    if sec.get("skipped"):
        return lines + [f"Skipped: {sec['skipped']}.", ""]

    def f(x, d=3):
        return "n/a" if x is None else f"{x:.{d}f}"

    rows = []
    for name, r in sec["prms"].items():
        rows.append([name, str(r["steps"]), f(r["error_free_share"]), f(r["ece_raw"]),
                     f"**{f(r.get('ece'))}**" if r["calibrated"] else "not calibrated",
                     f(r.get("dev_ece")), f"{f(r['a'], 4)} / {f(r['b'], 4)}" if r["calibrated"] else "n/a",
                     str(r.get("fit_steps", "n/a"))])
    header = ["PRM", "test steps", "share error-free", "ECE raw", "ECE calibrated", "ECE dev check", "a / b",
              "fit steps"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |"
                                                                             for r in rows] + [""]
    for name in sec["prms"]:
        if f"calibration:{name}" in plots:
            lines += [f"![reliability diagram: {name}]({plots[f'calibration:{name}']})", ""]
    return lines
