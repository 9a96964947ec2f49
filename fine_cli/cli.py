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

from fine_cli import console
from fine_cli.errors import FineError

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
    help="Measure rankings: recall of known mislabelled points.", no_args_is_help=True
)
app.add_typer(evaluate_app, name="evaluate")

F = TypeVar("F", bound=Callable[..., Any])


def handled(fn: F) -> F:
    """Turn FineError into one sentence on stderr and its exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FineError as exc:
            console.error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.error("interrupted; no output was written.")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None
        except MemoryError:
            console.error("out of memory; lower collect.chunk_size or data.n_train.")
            raise typer.Exit(4) from None
        except Exception as exc:
            if os.environ.get("FINE_DEBUG"):
                raise
            console.error(
                f"internal error ({type(exc).__name__}: {exc}); "
                "re-run with FINE_DEBUG=1 for a traceback and report it."
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class Method(str, Enum):
    fine = "fine"
    tracin = "tracin"
    grad_cos = "grad-cos"
    loss = "loss"


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
) -> None:
    """Train the main and auxiliary models and collect f-INE signals (Algorithm 1)."""
    from fine_cli.artifacts import save_artifact
    from fine_cli.config import load_config
    from fine_cli.stages import train_collect as stage

    cfg = load_config(config, set_ or [])
    with console.epoch_progress(quiet) as progress:
        arrays, meta = stage.run(cfg, progress)
    save_artifact(output, "signals", arrays, meta)
    t = meta["timing"]
    n = arrays["train_index"].shape[0]
    console.info(
        f"signals: {n} training points, {arrays['lr'].shape[0]} checkpoints, mode {meta['mode']}; "
        f"training {t['train_s']:.1f} s, collection {t['collect_s']:.1f} s"
        + (f" -> {output}" if output != "-" else "")
    )


@app.command()
@handled
def estimate(
    signals: Annotated[str, typer.Argument(help="Signals .npz from train-collect ('-' = stdin).")],
    method: Annotated[Method, typer.Option(help="Influence method.")] = Method.fine,
    output: Output = "influence.npz",
) -> None:
    """Estimate the influence of every training subset (f-INE Algorithm 2, or a baseline)."""
    from fine_cli.artifacts import load_artifact, save_artifact
    from fine_cli.stages import estimate as stage

    art = load_artifact(signals, "signals", stage.SIGNALS_REQUIRED)
    arrays, meta = stage.run(art, method.value)
    save_artifact(output, "influence", arrays, meta)
    q, g = arrays["scores"].shape
    console.info(
        f"influence ({method.value}): {q} quer{'y' if q == 1 else 'ies'} x {g} subsets"
        + (f" -> {output}" if output != "-" else "")
    )


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
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Also write ranking .npz ('-' = stdout).")
    ] = None,
) -> None:
    """Order training examples by influence, most influential first."""
    from fine_cli.artifacts import load_artifact, save_artifact
    from fine_cli.stages import rank as stage

    art = load_artifact(influence, "influence", stage.INFLUENCE_REQUIRED)
    arrays, meta = stage.run(art, query, aggregate.value)
    if output is not None:
        save_artifact(output, "ranking", arrays, meta)
    rows = console.ranking_rows(arrays, top)
    title = f"top {len(rows)} of {len(arrays['order'])} by {meta['method']} ({meta['query']})"
    text = console.format_ranking(rows, fmt.value, title)
    if output == "-":  # the ranking file takes stdout; the rows go to stderr
        sys.stderr.write(text)
    else:
        console.write_text_stdout(text)


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
        raise FineError(
            "standard input ('-') can be given once only; pass the other rankings as files."
        )
    report = stage.run_recall(stage.load_rankings(rankings), grid)
    if plot:
        from fine_cli.plots import plot_recall

        plot_recall(report, plot)
        console.info(f"plot -> {plot}")
    if as_json:
        console.write_text_stdout(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        console.write_text_stdout(console.format_recall(report))


def _parse_grid(text: str) -> list[float]:
    try:
        grid = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FineError(f"--p-grid '{text}' is not a comma-separated list of numbers.") from None
    if not grid or any(not 0 <= p <= 100 for p in grid):
        raise FineError(f"--p-grid '{text}' must hold percentages between 0 and 100.")
    return grid


def main() -> None:
    app()


if __name__ == "__main__":
    main()
