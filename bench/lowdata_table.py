"""The table and pictures of `bench/quality_lowdata.py`: its rows read back in VARIANTS order,
the summary over seeds with the share of the FID gap each variant closes, the printed table, the
sample grids side by side and the FID curves over training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.lowdata_variants import COPIES, SCORES, VARIANTS, pct


def read_rows(rows: Path) -> list[dict]:
    """Every run's row under `rows`, in VARIANTS order (the train-copies reference first), then by
    steps and seed."""
    order = {name: i for i, name in enumerate([COPIES, *VARIANTS])}

    def key(r):
        base = "baseline-all" if r["variant"] == "baseline-100%" else r["variant"].rsplit("-", 1)[0]
        return order.get(base, len(order)), r.get("steps") or 0, r["seed"] if r["seed"] is not None else -1

    return sorted((json.loads(p.read_text()) for p in rows.glob("*.json")), key=key)


def best_snapshot(history: list[dict]) -> dict:
    """{"best": the scores of the lowest-FID evaluation and its step, "evaluations": how many}
    from a run's evaluation history; {} when it has none."""
    scored = [r for r in history if np.isfinite(r.get("metrics", {}).get("eval/fid", np.nan))]
    if not scored:
        return {}
    best = min(scored, key=lambda r: r["metrics"]["eval/fid"])
    return {"best": {"step": best["step"], "kimg": best["kimg"],
                     **{k: best["metrics"][f"eval/{k}"] for k in SCORES}},
            "evaluations": len(scored), "fid_curve": [[r["step"], r["metrics"]["eval/fid"]] for r in scored]}


def grids_png(runs: list[dict], path: Path) -> Path:
    """The sample grids of each variant's lowest seed side by side, titled with its FID, recall
    and class accuracy: the picture docs/benchmarks.md shows."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from PIL import Image

    first: dict[str, dict] = {}
    for r in sorted((r for r in runs if r.get("grid_png")), key=lambda r: r["seed"]):
        first.setdefault(r["variant"], r)
    first = dict(sorted(first.items(), key=lambda kv: kv[0] == "baseline-100%"))  # the reference last
    fig = Figure(figsize=(2.4 * max(1, len(first)), 3.9), layout="constrained")
    for i, (name, r) in enumerate(first.items()):
        ax = fig.add_subplot(1, len(first), i + 1)
        ax.imshow(np.asarray(Image.open(r["grid_png"])))
        label = name.replace("+", "\n+")  # long combined names on two lines, not over the next panel
        ax.set_title(f"{label} (seed {r['seed']})\nFID {r['fid']:.2f}  R {r['recall']:.2f}  "
                     f"acc {r['class_accuracy']:.2f}", fontsize=7)
        ax.axis("off")
    fig.savefig(path, format="png", dpi=110)
    return path


def curves_png(runs: list[dict], path: Path) -> Path:
    """FID against the held-out images over training, one line per run scored during training (a
    colour per variant, a line style per seed), with the training images' own FID for reference.
    Under the CPU budget the x axis is CPU time in the baseline's G steps (a variant's step times
    its cost ratio), so every run ends at the same x and the curves compare at equal cost."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    scored = [r for r in runs if r.get("fid_curve")]
    bests: dict[str, list[str]] = {}
    for r in sorted(scored, key=lambda r: r["seed"]):
        bests.setdefault(r["variant"], []).append(f"{r['best']['fid']:.2f}")
    cpu = bool(scored) and all(r["budget"] == "cpu" for r in scored)
    colours: dict[str, str] = {}
    for r in scored:
        new = r["variant"] not in colours
        c = colours.setdefault(r["variant"], f"C{len(colours)}")
        steps, fids = zip(*r["fid_curve"])
        scale = r["base_steps"] / r["steps"] if cpu else 1.0
        ax.plot([s * scale for s in steps], fids, color=c, ls=("-", "--", ":", "-.")[r["seed"] % 4], lw=1.2,
                label=f"{r['variant']} (best: {', '.join(bests[r['variant']])})" if new else None)
    for r in runs:
        if r["variant"].startswith(COPIES):
            ax.axhline(r["fid"], color="0.5", lw=0.8, ls=":", label=f"training images themselves ({r['fid']:.2f})")
    ax.set(yscale="log", xlabel="CPU time, in the baseline's G steps" if cpu else "G step",
           ylabel="FID vs held-out (domain features)",
           title="FID during training (line style: seed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5)
    fig.savefig(path, format="png", dpi=110)
    return path


def summarize(runs: list[dict], fraction: float = 0.1) -> dict:
    """Per variant: mean and spread over seeds, and the share of the FID gap closed; the same
    for the best snapshot (`best_fid`, `best_gap_closed`, goal `_goal_best`) where every run of
    the variant was evaluated during training."""
    out = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        rows = [r for r in runs if r["variant"] == name]
        out[name] = {k: float(np.mean([r[k] for r in rows])) for k in SCORES}
        out[name]["fid_std"] = float(np.std([r["fid"] for r in rows]))
        if all("steps" in r for r in rows):  # not the train-copies row
            out[name]["steps"] = round(float(np.mean([r["steps"] for r in rows])))
        if all("best" in r for r in rows):
            best = [r["best"]["fid"] for r in rows]
            out[name].update(best_fid=float(np.mean(best)), best_fid_std=float(np.std(best)),
                             best_step=round(float(np.mean([r["best"]["step"] for r in rows]))))
        elif name.startswith(COPIES):  # no training: its FID is its best
            out[name].update(best_fid=out[name]["fid"], best_fid_std=0.0)
        out[name]["seeds"] = len(rows)
    _gap(out, fraction, "fid", "gap_closed", "_goal")
    _gap(out, fraction, "best_fid", "best_gap_closed", "_goal_best")
    return out


def _gap(out: dict, fraction: float, fid: str, closed: str, goal: str) -> None:
    """Adds each variant's share of the `fid` gap between the subset and all-data baselines
    (as `closed`) and whether the best subset variant closes half of it (as `goal`)."""
    subset = f"-{pct(fraction)}"
    base, full = out.get(f"baseline{subset}", {}).get(fid), out.get("baseline-100%", {}).get(fid)
    if base is None or full is None or base <= full:  # not measured, or no gap to close
        return
    for s in out.values():
        if fid in s:
            s[closed] = (base - s[fid]) / (base - full)
    best = max((n for n in out if n.endswith(subset) and closed in out[n]
                and n not in (f"baseline{subset}", f"{COPIES}{subset}")),
               key=lambda n: out[n][closed], default=None)
    out[goal] = {"best": best, "gap_closed": out[best][closed] if best else None,
                 "met": bool(best and out[best][closed] >= 0.5)}


def print_lowdata(r: dict) -> None:
    s = r["summary"]
    budget = (f"the CPU time of {r['steps']} baseline G steps per run" if r.get("equal_cpu")
              else f"{r['steps']} G steps per run")
    print(f"\nlowdata: BigGAN (demo.yaml), {budget}, seeds {r['seeds']}, "
          f"domain features vs the held-out {pct(1 - r['fraction'])}, N={r['n_eval']}")
    print(f"{'variant':38s} {'steps':>5s} {'FID':>12s} {'KID':>8s} {'P':>6s} {'R':>6s} {'acc':>6s} "
          f"{'gap closed':>10s} {'best FID (step)':>20s} {'best gap':>8s}")
    for name, v in s.items():
        if name.startswith("_"):
            continue
        gap = f"{100 * v['gap_closed']:9.0f}%" if "gap_closed" in v else ""
        best = (f"{v['best_fid']:6.3f}±{v['best_fid_std']:5.3f} ({v.get('best_step', '-')})"
                if "best_fid" in v else "")
        best_gap = f"{100 * v['best_gap_closed']:7.0f}%" if "best_gap_closed" in v else ""
        print(f"{name:38s} {v.get('steps', ''):>5} {v['fid']:6.3f}±{v['fid_std']:5.3f} {v['kid']:8.4f} "
              f"{v['precision']:6.3f} {v['recall']:6.3f} {v['class_accuracy']:6.3f} {gap:>10s} "
              f"{best:>20s} {best_gap:>8s}")
    same = "on the same CPU budget" if r.get("equal_cpu") else "in the same G steps"
    for key, which in (("_goal", "last"), ("_goal_best", "best")):
        goal = s.get(key)
        if goal:
            print(f"goal (best {pct(r['fraction'])} variant closes >= 50% of the FID gap {same}, "
                  f"{which} snapshot): {'met' if goal['met'] else 'NOT met'} ({goal['best']}: "
                  f"{100 * (goal['gap_closed'] or 0):.0f}%)")
