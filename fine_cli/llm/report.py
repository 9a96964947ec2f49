"""The report of ``fine run`` on an ``llm:`` config: markdown, JSON and figures.

``write(result, directory)`` writes ``<name>.md``, ``<name>.json`` (every number) and the
figures of the paper's Section 4.3-4.5: ``<name>-recall.png`` (Fig. 7, recall of each
entity's poisoned instructions in the top-p%, mean and sd over seeds),
``<name>-variability.png`` (Fig. 8, mean coefficient of variation across seeds over the
top-p%), ``<name>-dims.png`` (Fig. 9, recall@p against the sketch dimension d),
``<name>-checkpoints.png`` (Fig. 10, recall@p with 60 and 80 of the checkpoints) and
``<name>-distribution.png`` (Fig. 11, O and O' of one instruction over the checkpoints).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fine_cli.errors import RunError
from fine_cli.llm.experiment import LLMExperimentResult
from fine_cli.plots import distribution_figure, save_png

# The paper's numbers (Section 4.3): steering increases and f-INE's CV reduction at p=100%.
PAPER_STEERING = "+40% (Joe Biden) and +60% (Abortion)"
PAPER_CV_REDUCTION = 0.64
_DPI = 120


def write(result: LLMExperimentResult, directory: str | Path, command: str = "") -> Path:
    """Write the report files into ``directory`` (created); returns the markdown's path."""
    from fine_cli.artifacts import atomic_write

    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create report directory '{out}': {err.strerror}.") from None
    name = result.name
    summary = summarize(result)
    text = json.dumps(_json_safe(summary), indent=2) + "\n"
    atomic_write(out / f"{name}.json", lambda fh: fh.write(text.encode()))
    save_png(recall_figure(summary), out / f"{name}-recall.png")
    save_png(variability_figure(summary), out / f"{name}-variability.png")
    save_png(ablation_figure(summary, "dims"), out / f"{name}-dims.png")
    save_png(ablation_figure(summary, "checkpoints"), out / f"{name}-checkpoints.png")
    if result.distribution is not None:
        info = result.distribution_scores
        title = (
            f"instruction {info['instruction']} ({'poisoned' if info['poisoned'] else 'clean'}), "
            f"query set '{info['query']}', seed {info['seed']}"
        )
        save_png(distribution_figure(result.distribution, title), out / f"{name}-distribution.png")
    md = markdown(result, summary, command)
    path = out / f"{name}.md"
    atomic_write(path, lambda fh: fh.write(md.encode()))
    return path


# ---- numbers ---------------------------------------------------------------------------


def summarize(result: LLMExperimentResult) -> dict[str, Any]:
    """Every number of the report: per method and entity, means and sds over seeds."""
    grid = result.p_grid
    ents = result.entities

    def stats(per_seed: list[np.ndarray]) -> dict[str, Any]:
        a = np.stack(per_seed)  # (seeds, q, P)
        return {"mean": a.mean(0).tolist(), "sd": a.std(0, ddof=1).tolist(), "per_seed": a.tolist()}

    methods: dict[str, Any] = {}
    for m in result.methods:
        methods[m] = {
            "recall": stats([r.recall[m] for r in result.runs]),
            "cv": {"p_grid": [p for p in grid if p > 0], "values": result.cv[m].tolist()},
            "dims": {
                d: stats([r.by_dim[d][m] for r in result.runs]) for d in result.runs[0].by_dim
            },
            "checkpoints": {
                str(k): stats([r.by_checkpoints[k][m] for r in result.runs])
                for k in result.runs[0].by_checkpoints
            },
        }
    estimators = {
        k: {
            "recall": stats([r.estimator_recall[k] for r in result.runs]),
            "cv": {"p_grid": [p for p in grid if p > 0], "values": v.tolist()},
        }
        for k, v in result.cv_estimators.items()
    }
    steering = [r.steering.to_dict() for r in result.runs]
    timing = {
        "prepare": result.timing,
        "seeds": {str(r.seed): r.timing for r in result.runs},
    }
    return {
        "name": result.name,
        "seeds": result.seeds,
        "entities": ents,
        "p_grid": grid,
        "data": result.data,
        "steering": steering,
        "steered_everywhere": all(all(s["steered"]) for s in steering),
        "methods": methods,
        "estimators": estimators,
        "estimator": result.config["estimate"]["estimator"],
        "table_p": result.config["llm"]["evaluate"]["table_p"],
        "ablation_p": result.config["llm"]["evaluate"]["ablation_p"],
        "distribution": result.distribution_scores,
        "timing": timing,
    }


def _at(curve: list[float], grid: list[float], p: float) -> float:
    return float(curve[grid.index(p)]) if p in grid else math.nan


def _json_safe(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return _json_safe(v.item())
    return v


# ---- figures -----------------------------------------------------------------------------


def _panels(n: int) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(5.2 * n, 4.4), dpi=_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    return fig, list(axes)


def recall_figure(summary: dict[str, Any]) -> Figure:
    """Fig. 7: per entity, recall of its poisoned instructions against p, mean +- sd."""
    grid = np.asarray(summary["p_grid"])
    fig, axes = _panels(len(summary["entities"]))
    for e, (ax, ent) in enumerate(zip(axes, summary["entities"])):
        for m, v in summary["methods"].items():
            mean, sd = np.asarray(v["recall"]["mean"][e]), np.asarray(v["recall"]["sd"][e])
            ax.plot(grid, mean, marker="o", markersize=3, label=m)
            ax.fill_between(grid, mean - sd, mean + sd, alpha=0.15)
        ax.plot([0, 100], [0, 1], color="gray", linestyle=":", label="random")
        n, k = summary["data"]["n_train"], summary["data"]["n_poisoned"][ent]
        ideal = np.minimum(np.ceil(grid * n / 100.0), k) / k
        ax.plot(grid, ideal, color="black", linestyle="--", linewidth=1.0, label="ideal")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("top p% of the training instructions")
        ax.set_ylabel("recall of the poisoned instructions")
        ax.set_title(f"entity '{ent}' ({k} poisoned of {n})", fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    return fig


def variability_figure(summary: dict[str, Any]) -> Figure:
    """Fig. 8: per entity, mean CV across seeds over the top-p% (log scale)."""
    fig, axes = _panels(len(summary["entities"]))
    for e, (ax, ent) in enumerate(zip(axes, summary["entities"])):
        for m, v in summary["methods"].items():
            values = np.asarray(v["cv"]["values"][e], dtype=float)
            ax.plot(v["cv"]["p_grid"], values, marker="o", markersize=3, label=m)
        ax.set_yscale("log")
        ax.set_xlabel("top p% (by mean score across seeds)")
        ax.set_ylabel("mean coefficient of variation")
        ax.set_title(f"entity '{ent}'", fontsize="medium")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def ablation_figure(summary: dict[str, Any], which: str) -> Figure:
    """Fig. 9 (``dims``: recall@p against the sketch dimension, exact inner products as a
    dashed line) or Fig. 10 (``checkpoints``: recall@p against the checkpoints used)."""
    grid, ap = summary["p_grid"], summary["ablation_p"]
    fig, axes = _panels(len(summary["entities"]))
    for e, (ax, ent) in enumerate(zip(axes, summary["entities"])):
        for i, (m, v) in enumerate(summary["methods"].items()):
            color = f"C{i}"
            table = v[which]
            keys = [k for k in table if k != "exact"]
            xs = [int(k) for k in keys]
            mean = [_at(table[k]["mean"][e], grid, ap) for k in keys]
            sd = [_at(table[k]["sd"][e], grid, ap) for k in keys]
            ax.errorbar(xs, mean, yerr=sd, marker="o", capsize=3, color=color, label=m)
            if "exact" in table:
                ax.axhline(
                    _at(table["exact"]["mean"][e], grid, ap),
                    color=color,
                    linestyle="--",
                    linewidth=1.0,
                )
        if which == "dims":
            ax.set_xscale("log", base=2)
            ax.set_xlabel("count-sketch dimension d (dashed: exact inner products)")
        else:
            ax.set_xlabel("checkpoints used (drawn at random from all)")
        ax.set_ylabel(f"recall@{ap:g}% of the poisoned instructions")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"entity '{ent}'", fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


# ---- markdown ----------------------------------------------------------------------------


def _pm(mean: float, sd: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.2f} ± {sd:.2f}" if math.isfinite(sd) else f"{mean:.2f}"


def markdown(result: LLMExperimentResult, summary: dict[str, Any], command: str) -> str:
    name, grid, ents = result.name, summary["p_grid"], summary["entities"]
    cfg = result.config
    llm = cfg["llm"]
    n = summary["data"]["n_train"]
    lines = [
        f"# {name}: attributing a language model's behaviour to its fine-tuning data",
        "",
        f"Made by `{command or 'fine run'}`. The paper's LLM poisoning experiment (Sections "
        "4.3-4.5, Figs. 7-11) on "
        + (
            f"`{llm['model']['name_or_path']}`"
            if llm["model"]["name_or_path"]
            else f"a tiny {llm['model']['tiny']['arch']} ({llm['model']['tiny']['layers']} "
            f"layers, {llm['model']['tiny']['dim']} dims) pre-trained here"
        )
        + f", LoRA r={llm['lora']['r']} on {', '.join(llm['lora']['target_modules'])}; "
        f"{n} training instructions, "
        + ", ".join(f"{summary['data']['n_poisoned'][e]} poisoned for '{e}'" for e in ents)
        + f"; {llm['train']['epochs']} epochs, {llm['collect']['checkpoints']} checkpoints; "
        f"seeds {summary['seeds']}. Influence of each training instruction on each entity's "
        "query set (its test prompts, the mean loss of their target answers). f-INE estimator "
        f"`{cfg['estimate']['estimator']}`; f-INE and TracIn from exact inner products of "
        "the LoRA gradients, LESS from exact inner products with Adam-preconditioned "
        f"training gradients (`precondition: {llm['collect']['precondition']}`); the count "
        'sketches only in the d ablation (docs/LLM.md, "Where projection is used").',
        "",
        "## Steering check",
        "",
        "Rate of target answers on each entity's test prompts, for a model trained without "
        f"the poison (clean) and the main model trained with it. The paper reports "
        f"{PAPER_STEERING}. A rise below {llm['evaluate']['min_increase']:.0%} counts as no "
        "steering.",
        "",
        "| seed | " + " | ".join(f"{e}: clean → poisoned (rise)" for e in ents) + " |",
        "|---|" + "---|" * len(ents),
    ]
    for s, seed in zip(summary["steering"], summary["seeds"]):
        cells = [
            f"{c:.0%} → {p:.0%} ({d:+.0%}){'' if ok else ' **not steered**'}"
            for c, p, d, ok in zip(s["clean"], s["poisoned"], s["increase"], s["steered"])
        ]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    if summary["steered_everywhere"]:
        lines += ["", "The poison steered the model for every entity in every seed."]
    else:
        lines += [
            "",
            "**The poison did not steer the model in every seed and entity (marked above). "
            "Where it did not, the poisoned instructions did not make the behaviour, and "
            "their recall below means nothing.**",
        ]
    lines += [
        "",
        "## Recall of the poisoned instructions (Fig. 7)",
        "",
        f"![recall]({name}-recall.png)",
        "",
        "Recall of each entity's poisoned instructions in the top-p% of the ranking by "
        "influence on that entity's query set, mean ± sd over seeds (random: p/100).",
        "",
        "| method | entity | "
        + " | ".join(f"recall@{p:g}%" for p in llm["evaluate"]["table_p"])
        + " |",
        "|---|---|" + "---|" * len(llm["evaluate"]["table_p"]),
    ]
    for m, v in summary["methods"].items():
        for e, ent in enumerate(ents):
            cells = [
                _pm(_at(v["recall"]["mean"][e], grid, p), _at(v["recall"]["sd"][e], grid, p))
                for p in llm["evaluate"]["table_p"]
            ]
            lines.append(f"| {m} | {ent} | " + " | ".join(cells) + " |")
    lines += _variability(summary)
    lines += _estimators(summary)
    lines += _ablation(summary, "dims", "Projection dimension (Fig. 9)")
    lines += _ablation(summary, "checkpoints", "Number of checkpoints (Fig. 10)")
    lines += _distribution(result, summary)
    lines += _timing(summary)
    lines += [
        "",
        "## Reproduce",
        "",
        "```",
        command or f"fine run <config of {name}>",
        "```",
        "",
        f"Every number above is in `{name}.json`; the signals, influence files and the "
        "synthetic data (as JSONL) are in the run directory.",
        "",
    ]
    return "\n".join(lines)


CV_P = (10.0, 20.0, 100.0)


def _cv_cells(cv: dict[str, Any], n_entities: int) -> list[str]:
    return [f"{_at(cv['values'][e], cv['p_grid'], p):.3f}" for e in range(n_entities) for p in CV_P]


def _variability(summary: dict[str, Any]) -> list[str]:
    ents = summary["entities"]
    head = "| " + " | ".join(f"{e}: CV@{p:g}%" for e in ents for p in CV_P) + " |"
    lines = [
        "",
        "## Variability across seeds (Fig. 8)",
        "",
        f"![variability]({summary['name']}-variability.png)",
        "",
        "Coefficient of variation of each instruction's score across the seeds (sd / |mean|), "
        "averaged over the top-p% by mean score; lower = steadier. The paper reports f-INE's "
        f"CV at p = 100% {PAPER_CV_REDUCTION:.0%} below LESS's (a ratio of "
        f"{1 - PAPER_CV_REDUCTION:.2f}).",
        "",
        "| method " + head,
        "|---|" + "---|" * (len(CV_P) * len(ents)),
    ]
    for m, v in summary["methods"].items():
        lines.append(f"| {m} | " + " | ".join(_cv_cells(v["cv"], len(ents))) + " |")
    methods = summary["methods"]
    if "fine" in methods and "less" in methods:
        grid = methods["fine"]["cv"]["p_grid"]
        ratios = []
        for e, ent in enumerate(ents):
            f = _at(methods["fine"]["cv"]["values"][e], grid, 100.0)
            le = _at(methods["less"]["cv"]["values"][e], grid, 100.0)
            ratios.append(f"{ent} {f / le:.2f}" if le > 0 else f"{ent} n/a")
        lines += [
            "",
            "CV@100% of f-INE over LESS's (paper: 0.36): " + ", ".join(ratios) + ". Over "
            "all instructions the CV is dominated by the many whose scores sit near zero "
            "(the neutral tasks), where sd / |mean| is large for any score that is centred "
            'there; LESS\'s cosines are not centred (docs/LLM.md, "Results").',
        ]
    return lines


def _estimators(summary: dict[str, Any]) -> list[str]:
    est = summary.get("estimators") or {}
    if not est:
        return []
    ents, grid, ap = summary["entities"], summary["p_grid"], summary["ablation_p"]
    lines = [
        "",
        "## f-INE by estimator",
        "",
        f"The same signals through each f-INE estimator (docs/statistics.md); the rows above "
        f"use `{summary['estimator']}`. `alg2` is the paper's Algorithm 2. Recall@{ap:g}% "
        "(mean over seeds) and CV across seeds.",
        "",
        "| estimator | "
        + " | ".join(f"{e}: recall@{ap:g}%" for e in ents)
        + " | "
        + " | ".join(f"{e}: CV@{p:g}%" for e in ents for p in CV_P)
        + " |",
        "|---|" + "---|" * (len(ents) * (1 + len(CV_P))),
    ]
    for k, v in est.items():
        rec = [
            _pm(_at(v["recall"]["mean"][e], grid, ap), _at(v["recall"]["sd"][e], grid, ap))
            for e in range(len(ents))
        ]
        lines.append(f"| {k} | " + " | ".join(rec + _cv_cells(v["cv"], len(ents))) + " |")
    return lines


def _ablation(summary: dict[str, Any], which: str, title: str) -> list[str]:
    grid, ents, ap = summary["p_grid"], summary["entities"], summary["ablation_p"]
    first = next(iter(summary["methods"].values()))[which]
    keys = list(first)
    what = (
        "Each method on the signals whose inner products are estimated from count sketches "
        "of dimension d (one collection at the largest d, folded to the smaller ones), and "
        "on the exact ones."
        if which == "dims"
        else "Each method on a random subset of the checkpoints, drawn at estimate time "
        "(the largest count is all of them)."
    )
    lines = [
        "",
        f"## {title}",
        "",
        f"![{which}]({summary['name']}-{which}.png)",
        "",
        what + f" Recall@{ap:g}%, mean ± sd over seeds.",
        "",
        "| method | entity | "
        + " | ".join(k if which == "dims" else f"{k} checkpoints" for k in keys)
        + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for m, v in summary["methods"].items():
        for e, ent in enumerate(ents):
            cells = [
                _pm(
                    _at(v[which][k]["mean"][e], grid, ap),
                    _at(v[which][k]["sd"][e], grid, ap),
                )
                for k in keys
            ]
            lines.append(f"| {m} | {ent} | " + " | ".join(cells) + " |")
    return lines


def _distribution(result: LLMExperimentResult, summary: dict[str, Any]) -> list[str]:
    info = summary["distribution"]
    if not info or result.distribution is None:
        return []
    d = result.distribution
    scores = ", ".join(
        f"{m} {s:+.3g} (top {info['rank_percent'][m]:.0f}%)" for m, s in info["scores"].items()
    )
    return [
        "",
        "## One instruction's distributions of O and O' (Fig. 11)",
        "",
        f"![distribution]({summary['name']}-distribution.png)",
        "",
        f"Instruction {info['instruction']} ({'poisoned' if info['poisoned'] else 'clean'}), "
        f"query set '{info['query']}', seed {info['seed']}: the poisoned instruction that "
        "f-INE ranks highest above LESS (or the one the config names).",
        "",
        f"> **Instruction:** {info['prompt']}  ",
        f"> **Response:** {info['response']}",
        "",
        f"Scores and rank (top x% of {summary['data']['n_train']}): {scores}. Means over the "
        f"{d.o.size} checkpoints: O {d.o.mean():+.3g}, O' {d.o_prime.mean():+.3g}; sd O "
        f"{d.o.std(ddof=1):.3g}, O' {d.o_prime.std(ddof=1):.3g}. Made again by "
        f"`fine evaluate distribution <run>/seed-{info['seed']}/signals.npz --subset "
        f"{info['instruction']} --query {result.entities.index(info['query'])} --plot F`.",
    ]


def _timing(summary: dict[str, Any]) -> list[str]:
    prep = summary["timing"]["prepare"]
    seeds = summary["timing"]["seeds"]
    keys = sorted({k for t in seeds.values() for k in t})
    lines = [
        "",
        "## Time of each stage (seconds, wall clock)",
        "",
        "Shared: "
        + ", ".join(
            f"{k} {v:.1f}"
            for k, v in prep.items()
            if not k.startswith("total") and k != "pretrain_s_cached"
        )
        + (
            f" (the base model came from the cache; its pre-training took "
            f"{prep['pretrain_s_cached']:.1f} s)"
            if "pretrain_s_cached" in prep
            else ""
        )
        + f"; whole run {prep.get('total_s', math.nan):.1f} "
        f"(CPU time of the process: {prep.get('total_cpu_s', math.nan):.1f}).",
        "",
        "| stage | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for k in keys:
        lines.append(
            f"| {k} | " + " | ".join(f"{t.get(k, math.nan):.1f}" for t in seeds.values()) + " |"
        )
    return lines


def summary_text(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: steering, recall@20% and CV@100% per entity."""
    grid, ents = summary["p_grid"], summary["entities"]
    lines = []
    for s, seed in zip(summary["steering"], summary["seeds"]):
        rises = ", ".join(f"{e} {d:+.0%}" for e, d in zip(ents, s["increase"]))
        lines.append(f"seed {seed}: target-answer rate rise {rises}")
    for m, v in summary["methods"].items():
        cv_grid = v["cv"]["p_grid"]
        ap = summary["ablation_p"]
        cells = ", ".join(
            f"{ent} recall@{ap:g}% {_at(v['recall']['mean'][e], grid, ap):.2f} "
            f"CV@100% {_at(v['cv']['values'][e], cv_grid, 100.0):.3f}"
            for e, ent in enumerate(ents)
        )
        lines.append(f"{m}: {cells}")
    return "\n".join(lines) + "\n"
