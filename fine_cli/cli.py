"""`fine`: the command line. Parses, calls a stage's run(), prints, maps errors to exit codes.

Exit codes: 0 ok, 1 internal error (a bug: please report it), 2 bad usage or config,
3 bad input file, 4 failure while running, 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from fine_cli import console, registry
from fine_cli.config import DEFAULT_ESTIMATOR, ESTIMATORS, EstimateConfig
from fine_cli.errors import ConfigError, FineError, InputFileError, RunError, shorten

app = typer.Typer(
    name="fine",
    help=(
        "f-INE: which training examples matter, reliably under training randomness.\n\n"
        "Stages pass .npz files and compose in pipelines ('-' = stdin/stdout):\n\n"
        "  fine train-collect configs/quickstart.yaml -o signals.npz\n\n"
        "  fine estimate signals.npz --method fine -o influence.npz\n\n"
        "  fine rank influence.npz --top 20 -o ranking.npz\n\n"
        "  fine evaluate recall ranking.npz --plot recall.png"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
evaluate_app = typer.Typer(
    help="Measure rankings: recall of known mislabelled points, consistency and variability "
    "across runs.",
    no_args_is_help=True,
)
app.add_typer(evaluate_app, name="evaluate")

F = TypeVar("F", bound=Callable[..., Any])
# The one place where library exceptions become exit codes (README, "Exit codes").
EXIT_CODES: dict[type[FineError], int] = {ConfigError: 2, InputFileError: 3, RunError: 4}


def exit_code(exc: FineError) -> int:
    """2 bad usage or config, 3 bad input file, 4 failure while running (the most derived
    class that has a code wins); a bare FineError counts as bad usage."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 2


# Defaults of the estimate options: the config schema's (one source).
_EST = EstimateConfig()


def handled(fn: F) -> F:
    """Turn FineError into one sentence on stderr and its exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fine_cli import artifacts

        artifacts.begin_command()  # outputs may not replace inputs; locks released below
        try:
            return fn(*args, **kwargs)
        except FineError as exc:
            console.error(str(exc))
            raise typer.Exit(exit_code(exc)) from None
        except KeyboardInterrupt:
            console.error("interrupted; no output was written.")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None
        except MemoryError:
            console.error("out of memory; lower collect.chunk_size or data.n_train.")
            raise typer.Exit(4) from None
        except OSError as exc:  # a file system refusal that no stage turned into a sentence
            where = f" '{shorten(str(exc.filename), 200)}'" if exc.filename else ""
            console.error(
                f"cannot use{where}: {exc.strerror or exc}; check the path, its permissions "
                "and the free space."
            )
            raise typer.Exit(4) from None
        except Exception as exc:
            if os.environ.get("FINE_DEBUG"):
                raise
            if _out_of_memory(exc):  # torch's allocators raise RuntimeError, not MemoryError
                console.error(
                    "out of memory; lower collect.chunk_size, collect.probe_repeats or "
                    "data.n_train."
                )
                raise typer.Exit(4) from None
            console.error(
                f"internal error ({type(exc).__name__}: {shorten(str(exc), 500)}); "
                "re-run with FINE_DEBUG=1 for a traceback and report it."
            )
            raise typer.Exit(1) from None
        finally:
            artifacts.end_command()

    return wrapper  # type: ignore[return-value]


def _out_of_memory(exc: Exception) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def _claim(path: str | None, inputs: list[str], option: str = "-o") -> None:
    """Before any work: refuse an output that is a special file, a link, an input or in a
    directory that cannot be written, and lock it against a second writer."""
    if path is None:
        return
    from fine_cli import artifacts

    artifacts.check_output(path, inputs, option)
    artifacts.claim_output(path, option)


def _method_help() -> tuple[str, FineError | None]:
    """The registry's methods for --help; a plugin that fails to load is reported by main()."""
    try:
        return registry.help_text(), None
    except FineError as exc:
        return "", exc


_METHOD_HELP, _LOAD_ERROR = _method_help()


class Fmt(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


class Agg(str, Enum):
    mean = "mean"
    sum = "sum"


Output = Annotated[str, typer.Option("--output", "-o", help="Output .npz path; '-' = stdout.")]


@app.command("train-collect")
@handled
def train_collect(
    config: Annotated[
        str, typer.Argument(help="YAML experiment config, e.g. configs/quickstart.yaml.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: --set train.epochs=5 (repeatable)."),
    ] = None,
    output: Output = "signals.npz",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    deterministic: Annotated[
        bool,
        typer.Option(
            help="One thread and deterministic kernels: the same arrays whatever the "
            "machine's thread count (slower on many cores; docs/ROBUSTNESS.md)."
        ),
    ] = False,
    run_dir: Annotated[
        str | None,
        typer.Option(
            help="Keep the run's state here after every checkpoint, removed on success "
            "(default: OUTPUT.run; none for -o -)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run interrupted in --run-dir (same config and data), or start it."
        ),
    ] = False,
) -> None:
    """Train the main and auxiliary models and collect f-INE signals (Algorithm 1).

    Under torchrun --nproc_per_node=P the models train data-parallel and collection is
    sharded over the processes; rank 0 writes the output (docs/performance.md).
    """
    from fine_cli import distributed, outofcore, runtime
    from fine_cli.artifacts import save
    from fine_cli.config import load_config
    from fine_cli.runstate import RunDir
    from fine_cli.stages import train_collect as stage

    cfg = load_config(config, set_ or [])
    if cfg.llm is not None:
        raise ConfigError(
            f"'{config}' is a language-model config (llm:); run it with fine run (docs/LLM.md)."
        )
    root = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 writes
    as_dir = outofcore.wants_dir(output) or cfg.collect.storage == "directory"
    if root:
        outofcore.claim_dir(output, config) if as_dir else _claim(output, [config])
    state_dir = run_dir or (None if output == "-" else output.rstrip("/") + ".run")
    with (
        runtime.deterministic(deterministic),
        console.epoch_progress(quiet or not root) as progress,
    ):
        signals = stage.run(
            cfg, progress, run_dir=state_dir, resume=resume, out_dir=output if as_dir else None
        )
    if root:
        outofcore.save_dir(signals, output) if as_dir else save(signals, output)
        if state_dir is not None:
            RunDir(state_dir, {}).remove()
        t = signals.meta["timing"]
        console.info(
            f"signals: {signals.summary()}; "
            f"training {t['train_s']:.1f} s, collection {t['collect_s']:.1f} s"
            + (f" -> {output}" if output != "-" else "")
        )
    distributed.close()


@app.command()
@handled
def estimate(
    signals: Annotated[str, typer.Argument(help="Signals .npz from train-collect ('-' = stdin).")],
    method: Annotated[str, typer.Option(help=f"Influence method. {_METHOD_HELP}.")] = "fine",
    estimator: Annotated[
        str, typer.Option(help=f"f-INE estimator: {', '.join(ESTIMATORS)} (docs/statistics.md).")
    ] = DEFAULT_ESTIMATOR,
    checkpoints: Annotated[
        str,
        typer.Option(
            help="First K checkpoints only (any method); auto = up to the held-out loss "
            "minimum when the signals record it; all = every checkpoint."
        ),
    ] = "auto",
    bootstrap: Annotated[
        int, typer.Option(min=0, help="f-INE: bootstrap draws for a standard error; 0 = none.")
    ] = _EST.bootstrap,
    permutations: Annotated[
        int,
        typer.Option(
            min=0,
            help="f-INE: with/without swaps for p-values, e.g. 999 (rank --fdr --null zero "
            "needs them); 0 = none.",
        ),
    ] = _EST.permutations,
    alternative: Annotated[
        str, typer.Option(help="f-INE p-values: two-sided, greater or less.")
    ] = _EST.alternative,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and swap draws.")] = _EST.seed,
    output: Output = "influence.npz",
) -> None:
    """Estimate the influence of every training subset (f-INE, or a baseline)."""
    from fine_cli import outofcore
    from fine_cli.artifacts import save
    from fine_cli.stages import estimate as stage

    registry.get(method)  # an unknown name fails before the file is read
    as_dir = outofcore.wants_dir(output)  # -o DIR/: .npy files, written as they are scored
    outofcore.claim_dir(output, signals) if as_dir else _claim(output, [signals])
    art = outofcore.open_result(signals, "signals")  # a file, or a signals directory
    opts = stage.EstimateOptions(
        estimator=estimator,
        checkpoints=parse_checkpoints(checkpoints),
        bootstrap=bootstrap,
        permutations=permutations,
        alternative=alternative,
        seed=seed,
    )
    influence = stage.run(art, method, opts, out_dir=output if as_dir else None)
    outofcore.save_dir(influence, output) if as_dir else save(influence, output)
    for text in influence.meta.get("warnings", []):
        console.warning(text)
    console.info(influence.summary() + (f" -> {output}" if output != "-" else ""))


def parse_checkpoints(value: str) -> int | str | None:
    """``--checkpoints``: a positive K, ``auto`` or ``all`` (None)."""
    if value in ("auto", "all"):
        return None if value == "all" else value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ConfigError(f"--checkpoints is '{value}'; give a positive integer K, auto or all.")


class Null(str, Enum):
    """The null hypothesis of ``rank --fdr`` (fine_cli/selection.py)."""

    typical = "typical"
    zero = "zero"


class NullScale(str, Enum):
    """The scale of the typical null (fine_cli/selection.py); auto: by the estimator."""

    auto = "auto"
    linear = "linear"
    log = "log"


@app.command()
@handled
def rank(
    influence: Annotated[str, typer.Argument(help="Influence .npz from estimate ('-' = stdin).")],
    top: Annotated[int, typer.Option(min=1, help="Rows to print.")] = 20,
    fmt: Annotated[Fmt, typer.Option("--format", help="How to print the top rows.")] = Fmt.table,
    query: Annotated[
        int | None, typer.Option(help="Test mode: rank for this test point (position).")
    ] = None,
    aggregate: Annotated[
        Agg, typer.Option(help="Test mode without --query: combine test points by this.")
    ] = Agg.mean,
    fdr: Annotated[
        float | None,
        typer.Option(help="Select at this false discovery rate, e.g. 0.05 (see --null)."),
    ] = None,
    null: Annotated[
        Null,
        typer.Option(
            help="What --fdr tests: typical = more influential than a typical training point "
            "(empirical null of the scores); zero = any influence at all (permutation p-values).",
        ),
    ] = Null.typical,
    null_scale: Annotated[
        NullScale,
        typer.Option(
            help="Scale of the typical null's normal: auto = the one calibrated for the "
            "estimator (log for rb, linear for paired; docs/statistics.md, section 8).",
        ),
    ] = NullScale.auto,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Also write ranking .npz ('-' = stdout).")
    ] = None,
) -> None:
    """Order training examples by influence, most influential first."""
    from fine_cli.artifacts import save
    from fine_cli.outofcore import open_result
    from fine_cli.stages import rank as stage

    loaded = open_result(influence, "influence")  # a file, or an influence directory
    scale = None if null_scale is NullScale.auto else null_scale.value
    ranking = stage.run(loaded, query, aggregate.value, fdr, null=null.value, scale=scale)
    arrays, meta = ranking.arrays, ranking.meta
    if output is not None:
        save(ranking, output)
    if fdr is not None:
        console.info(console.fdr_line(meta["fdr"], len(arrays["order"])))
        if meta["fdr"].get("warning"):
            console.warning(meta["fdr"]["warning"] + ".")
    rows = console.ranking_rows(arrays, top)
    title = f"top {len(rows)} of {len(arrays['order'])} by {meta['method']} ({meta['query']})"
    text = console.format_ranking(rows, fmt.value, title)
    if output == "-":  # the ranking file takes stdout; the rows go to stderr
        sys.stderr.write(text)
    else:
        console.write_text_stdout(text)


@app.command()
@handled
def validate(
    config: Annotated[
        str, typer.Argument(help="YAML config of the runs to check, e.g. configs/quickstart.yaml.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value, e.g. validation.models=32."),
    ] = None,
    models: Annotated[
        int | None, typer.Option(min=4, help="Models on random halves; default validation.models.")
    ] = None,
    signals: Annotated[
        list[str] | None,
        typer.Option(
            "--signals",
            help="Self-mode signals to score (repeatable, one per seed); "
            "default: train-collect for each of experiment.seeds.",
        ),
    ] = None,
    truth: Annotated[
        str | None, typer.Option(help="Ground truth .npz from --save-truth, instead of retraining.")
    ] = None,
    save_truth: Annotated[
        str | None, typer.Option(help="Write the ground truth (models' losses) to this .npz.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Also write the JSON report here.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    run_dir: Annotated[
        str | None,
        typer.Option(
            help="Keep each retrained model's results and each seed's signals here until the "
            "report is written (default with --resume: runs/<name>/validate)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Keep results in --run-dir, and reuse those of an interrupted validate "
            "(same config and data): its finished models and seeds are not trained again."
        ),
    ] = False,
) -> None:
    """Check every method against a retraining ground truth (models on random halves)."""
    from fine_cli.artifacts import load_signals, load_truth, save
    from fine_cli.config import load_config
    from fine_cli.estimators.options import EstimateOptions
    from fine_cli.stages import validate as stage
    from fine_cli.stages import validate_test

    overrides = (set_ or []) + ([f"validation.models={models}"] if models is not None else [])
    cfg = load_config(config, overrides)
    inputs = [config, *(signals or []), *([truth] if truth else [])]
    if output is not None and output == save_truth and output != "-":
        raise ConfigError(f"-o and --save-truth are both '{output}'; give two paths.")
    _claim(output, inputs)
    _claim(save_truth, inputs, "--save-truth")
    test_mode = cfg.collect.mode == "test"  # test-point attribution: LDS and mu_true(q, G)
    module: Any = validate_test if test_mode else stage
    keep = run_dir or (f"runs/{cfg.name}/validate" if resume else None)
    run = None
    if keep is not None:
        from pathlib import Path

        from fine_cli.runstate import open_run

        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        run = open_run("validate", cfg, keep, resume)
    if truth is not None:
        truth_res = load_truth(truth)
    else:
        with console.epoch_progress(quiet, unit="models") as progress:
            truth_res = module.run_truth(
                cfg, (lambda i, m: progress("ground truth", i, m)) if progress else None, run=run
            )
        if save_truth is not None:
            save(truth_res, save_truth)
            console.info(f"ground truth -> {save_truth}")
    if signals:
        runs = [load_signals(p) for p in signals]
    else:
        with console.epoch_progress(quiet) as progress:
            runs = (
                validate_test.collect_signals(cfg, truth_res, progress, run=run)
                if test_mode
                else stage.collect_signals(cfg, progress, run=run)
            )
    report = module.run(cfg, truth_res, runs, EstimateOptions.from_config(cfg.estimate))
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    if output is not None:
        _write_text(output, text)
    if run is not None:
        run.remove()
    table = console.format_test_validation if test_mode else console.format_validation
    console.write_text_stdout(text if as_json else table(report))


def _write_text(path: str, text: str) -> None:
    """Write a text report atomically ('-' = standard output)."""
    from fine_cli.artifacts import atomic_write

    if path == "-":
        console.write_text_stdout(text)
        return
    atomic_write(path, lambda fh: fh.write(text.encode()))


@evaluate_app.command("recall")
@handled
def evaluate_recall(
    rankings: Annotated[
        list[str], typer.Argument(help="Ranking .npz files from rank (one per method).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    plot: Annotated[str | None, typer.Option(help="Write the recall curves to this PNG.")] = None,
    p_grid: Annotated[
        str | None, typer.Option(help="Comma-separated percentages; default: the config's p grid.")
    ] = None,
) -> None:
    """Recall of mislabelled points in the top-p%, area under the recall curve, AUROC, AUPRC."""
    from fine_cli.stages import evaluate as stage

    grid = _parse_grid(p_grid) if p_grid else None
    if sum(1 for r in rankings if r == "-") > 1:
        raise ConfigError(
            "standard input ('-') can be given once only; pass the other rankings as files."
        )
    _claim(plot, rankings, "--plot")
    report = stage.run_recall(stage.load_rankings(rankings), grid)
    if plot:
        from fine_cli.plots import plot_recall

        plot_recall(report, plot)
        console.info(f"plot -> {plot}")
    if as_json:
        console.write_text_stdout(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        console.write_text_stdout(console.format_recall(report))


@evaluate_app.command("tradeoff")
@handled
def evaluate_tradeoff(
    signals: Annotated[str, typer.Argument(help="Signals .npz from train-collect ('-' = stdin).")],
    subset: Annotated[
        int, typer.Option(min=0, help="Subset position (self mode: the training point's).")
    ],
    plot: Annotated[str, typer.Option(help="Write the trade-off curves to this PNG.")],
    query: Annotated[int | None, typer.Option(help="Test mode: the test point (position).")] = None,
    estimator: Annotated[
        str, typer.Option(help="Estimator whose G_mu curve is drawn boldest.")
    ] = DEFAULT_ESTIMATOR,
    checkpoints: Annotated[
        int | None, typer.Option(min=1, help="Use only the first K checkpoints.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the curve and the mu values as JSON.")
    ] = False,
) -> None:
    """Empirical type-I / type-II trade-off of one subset with the fitted G_mu curves."""
    from fine_cli.artifacts import load_signals
    from fine_cli.plots import plot_tradeoff
    from fine_cli.stages import tradeoff as stage

    if estimator not in ESTIMATORS:
        raise ConfigError(
            f"unknown estimator '{estimator}'; choose one of {', '.join(ESTIMATORS)}."
        )
    _claim(plot, [signals], "--plot")
    curve = stage.run(load_signals(signals), subset, query, checkpoints)
    plot_tradeoff(curve, plot, highlight=estimator)
    console.info(f"plot -> {plot}")
    if as_json:
        console.write_text_stdout(json.dumps(curve.to_dict()) + "\n")
    else:
        mus = ", ".join(f"{k} {v:+.3f}" for k, v in curve.mu.items())
        console.write_text_stdout(f"subset {subset}: mu by estimator: {mus}\n")


@app.command()
@handled
def inspect(
    file: Annotated[str, typer.Argument(help="A signals, influence, ranking or truth .npz.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    input_: Annotated[
        str | None,
        typer.Option(
            "--input", help="Check that FILE was made from this file (its recorded sha256)."
        ),
    ] = None,
) -> None:
    """What a file is and what made it: kind, schema, config, seeds, input hash, versions,
    threads, timing and array shapes."""
    from fine_cli.stages import inspect as stage

    d = stage.describe(file, input_)
    if as_json:
        console.write_text_stdout(json.dumps(d, indent=2, default=str) + "\n")
    else:
        console.write_text_stdout(console.format_inspect(d))
    if not d["valid"]:
        raise InputFileError(str(d["problem"]))


def _parse_grid(text: str) -> list[float]:
    try:
        grid = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--p-grid '{text}' is not a comma-separated list of numbers.") from None
    if not grid or any(not 0 <= p <= 100 for p in grid):
        raise ConfigError(f"--p-grid '{text}' must hold percentages between 0 and 100.")
    return grid


RunDirs = Annotated[
    list[str],
    typer.Argument(
        help="RUN directories, one per training seed, each holding ranking-<method>.npz "
        "(as fine run writes them)."
    ),
]
MethodFilter = Annotated[
    list[str] | None,
    typer.Option("--method", help="Only this method (repeatable); default: all in every run."),
]


@evaluate_app.command("consistency")
@handled
def evaluate_consistency(
    runs: RunDirs,
    method: MethodFilter = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    plot: Annotated[str | None, typer.Option(help="Write Jaccard against p to this PNG.")] = None,
    p_grid: Annotated[
        str | None, typer.Option(help="Comma-separated percentages; default: the config's p grid.")
    ] = None,
) -> None:
    """Mean pairwise Jaccard of the top-p% sets across runs, per method (paper's Fig. 2)."""
    _across_runs("consistency", runs, method, as_json, plot, p_grid)


@evaluate_app.command("variability")
@handled
def evaluate_variability(
    runs: RunDirs,
    method: MethodFilter = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    plot: Annotated[str | None, typer.Option(help="Write mean CV against p to this PNG.")] = None,
    p_grid: Annotated[
        str | None, typer.Option(help="Comma-separated percentages; default: the config's p grid.")
    ] = None,
) -> None:
    """Coefficient of variation of each score across runs, mean over the top-p% (Fig. 8)."""
    _across_runs("variability", runs, method, as_json, plot, p_grid)


def _across_runs(
    measure: str,
    runs: list[str],
    methods: list[str] | None,
    as_json: bool,
    plot: str | None,
    p_grid: str | None,
) -> None:
    from fine_cli.stages import evaluate as stage

    grid = _parse_grid(p_grid) if p_grid else None
    _claim(plot, [], "--plot")
    loaded = stage.load_runs(runs, methods)
    fn = stage.run_consistency if measure == "consistency" else stage.run_variability
    report = fn(loaded, grid, runs)
    if plot:
        from fine_cli.plots import save_png
        from fine_cli.report import across_figure

        label = "Jaccard of the top-p% sets" if measure == "consistency" else "mean CV"
        save_png(across_figure(report, label, log=measure == "variability"), plot)
        console.info(f"plot -> {plot}")
    if as_json:
        console.write_text_stdout(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        console.write_text_stdout(console.format_across(report))


@app.command("run")
@handled
def run_experiment(
    config: Annotated[
        str, typer.Argument(help="YAML experiment config, e.g. configs/mislabel_recall.yaml.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: --set train.epochs=5 (repeatable)."),
    ] = None,
    out_dir: Annotated[
        str | None,
        typer.Option("--out-dir", help="Where the RUN directories go; default runs/<name>."),
    ] = None,
    report_dir: Annotated[
        str, typer.Option("--report-dir", help="Where <name>.md and its figures go.")
    ] = "docs/results",
    reuse: Annotated[
        bool, typer.Option(help="Reuse a seed's signals.npz made by the same config.")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue an interrupted run: finished seeds are reused, an interrupted "
            "seed's train-collect continues from its state."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress.")] = False,
) -> None:
    """The whole experiment: every seed and method of the config, then the report."""
    import shlex

    from fine_cli.config import load_config
    from fine_cli.report import prepare, summarize, write
    from fine_cli.stages import experiment as stage

    cfg = load_config(config, set_ or [])
    out = out_dir or f"runs/{cfg.name}"
    if cfg.llm is not None:  # the language-model poisoning experiment (docs/LLM.md)
        _run_llm(cfg, config, set_ or [], out, report_dir, quiet)
        return
    prepare(report_dir, cfg.name)  # a bad report path fails now, not after the training
    say = None if quiet else console.info
    with console.epoch_progress(quiet) as progress:
        result = stage.run(cfg, out, reuse, say, progress, warn=console.warning, resume=resume)
    command = shlex.join(["fine", "run", config, *(f"--set={s}" for s in set_ or [])])
    path = write(result, report_dir, command)
    console.info(f"report -> {path}")
    console.write_text_stdout(console.format_experiment(summarize(result)))


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM / SIGHUP end a command like Ctrl-C: temporary files and locks are removed
    raise KeyboardInterrupt


def _run_llm(
    cfg: Any, config: str, overrides: list[str], out: str, report_dir: str, quiet: bool
) -> None:
    """``fine run`` on an ``llm:`` config: fine_cli/llm/experiment.py, then its report."""
    import shlex

    from fine_cli.llm import experiment as llm_stage
    from fine_cli.llm import report as llm_report

    result = llm_stage.run(cfg, out, None if quiet else console.info)
    command = shlex.join(["fine", "run", config, *(f"--set={s}" for s in overrides)])
    path = llm_report.write(result, report_dir, command)
    console.info(f"report -> {path}")
    console.write_text_stdout(llm_report.summary_text(llm_report.summarize(result)))


@evaluate_app.command("distribution")
@handled
def evaluate_distribution(
    signals: Annotated[str, typer.Argument(help="Signals .npz from train-collect or fine run.")],
    subset: Annotated[
        int, typer.Option(min=0, help="Subset position (self mode: the training point's).")
    ],
    query: Annotated[int | None, typer.Option(help="Test mode: the test point (position).")] = None,
    plot: Annotated[
        str | None, typer.Option(help="Write the two distributions to this PNG.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the samples and the scores as JSON.")
    ] = False,
) -> None:
    """O and O' of one subset over the checkpoints (the paper's Fig. 11), with f-INE's
    score by each estimator."""
    from fine_cli.artifacts import load_signals
    from fine_cli.stages.distribution import distribution

    dist = distribution(load_signals(signals), subset, query)
    if plot:
        from fine_cli.plots import distribution_figure, save_png

        save_png(distribution_figure(dist), plot)
        console.info(f"plot -> {plot}")
    if as_json:
        console.write_text_stdout(json.dumps(dist.to_dict()) + "\n")
    else:
        mus = ", ".join(f"{k} {v:+.3f}" for k, v in dist.influence.items())
        console.write_text_stdout(
            f"subset {subset}: mean O {dist.o.mean():+.4g}, mean O' {dist.o_prime.mean():+.4g} "
            f"over {dist.o.size} samples; f-INE by estimator: {mus}\n"
        )


def main() -> None:
    import signal

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _terminate)
    if _LOAD_ERROR is not None:  # a FINE_PLUGINS module that did not load
        console.error(str(_LOAD_ERROR))
        raise SystemExit(exit_code(_LOAD_ERROR))
    app()


if __name__ == "__main__":
    main()
