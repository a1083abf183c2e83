"""`segaudit report table|classes|compare|diagnose|html|plots` and `segaudit scope`: read
the run records, never train."""

from __future__ import annotations

from pathlib import Path

import typer

from segaudit.cli.common import FORMAT_HELP, OVERRIDES_HELP, command_line, err, finish, show, user_errors
from segaudit.cli.legacy import RoutedGroup

report_app = typer.Typer(
    cls=RoutedGroup,
    no_args_is_help=False,
    help="Show the run table and what the runs found (`segaudit report` alone: the table).",
    epilog="""[bold]Examples[/]\n
  segaudit report                                  [dim]# every run under ./runs[/]\n
  segaudit report table --where phase=train --where status=completed\n
  segaudit report table --format json paths.runs=/shared/runs\n
  segaudit report table --export results.parquet\n
  segaudit report diagnose DIAGNOSE_ID             [dim]# the verdict panel again[/]\n
  segaudit report compare strategy                 [dim]# before/after against strategy=baseline[/]\n
  segaudit report classes RUN                      [dim]# per class: shares, prior/real/noise IoU[/]\n
  segaudit report plots out/                       [dim]# every picture for these runs[/]\n
  segaudit report html report.html                 [dim]# one self-contained page to share[/]\n
  segaudit report html d.html --diagnose ID        [dim]# one diagnose, its steps, gates[/]""",
)

WHERE_HELP = "Keep runs with key=value (repeatable)."


@report_app.command("table")
def report_table(
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    where: list[str] = typer.Option([], "--where", "-w", help=WHERE_HELP),
    fmt: str = typer.Option("table", "--format", "-f", help=FORMAT_HELP),
    export: Path | None = typer.Option(None, "--export", help="Also write the table to FILE.csv or FILE.parquet."),
) -> None:
    """The run table: every run under paths.runs, one row each."""
    from segaudit.core.config import compose
    from segaudit.report.terminal import (
        MARKDOWN_COLUMNS,
        check_format,
        export_frame,
        filter_table,
        format_frame,
        no_runs_line,
        rich_table,
    )
    from segaudit.runs.records import load_table, runs_root

    with user_errors():
        check_format(fmt)
        cfg = compose(overrides or [])
        table = filter_table(load_table(runs_root(cfg)), where)
        if export is not None:
            export_frame(table, export)
            err.print(f"wrote {len(table)} runs to {export}")
        if fmt == "table" and table.empty:
            err.print(no_runs_line(runs_root(cfg), where), soft_wrap=True, highlight=False)
            return
        show(
            rich_table(table, title=f"runs in {cfg.paths.runs}"),
            lambda: format_frame(table, fmt, MARKDOWN_COLUMNS),
            fmt,
        )


@report_app.command("classes")
def report_classes(
    run_id: str = typer.Argument(..., help="A train, audit or diagnose run."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    plots: Path | None = typer.Option(None, "--plots", help="Also write the per-class bars here."),
    fmt: str = typer.Option("table", "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Per class: pixel shares, and the prior's, real input's and noise's IoU."""
    from segaudit.core.config import compose
    from segaudit.diagnostics.classes import class_table
    from segaudit.report.terminal import check_format, class_rich, format_frame

    with user_errors():
        check_format(fmt)
        frame = class_table(compose(overrides or []), run_id)
        if plots is not None:
            from segaudit.report.figures import class_bars

            err.print(f"wrote {class_bars(frame, plots / f'classes_{run_id}.png', run_id)}")
        show(class_rich(frame, run_id), lambda: format_frame(frame, fmt), fmt)


@report_app.command("compare")
def report_compare(
    column: str = typer.Argument(..., help="The column to group by, e.g. strategy."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    baseline: str = typer.Option("baseline", "--baseline", help="The group the deltas are measured against."),
    where: list[str] = typer.Option([], "--where", "-w", help=WHERE_HELP),
    fmt: str = typer.Option("table", "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Before/after: each group's mIoU against the baseline group."""
    from segaudit.core.config import compose
    from segaudit.diagnostics.scope import compare_table
    from segaudit.report.terminal import check_format, compare_rich, filter_table, format_frame
    from segaudit.runs.records import load_table, runs_root

    with user_errors():
        check_format(fmt)
        table = filter_table(load_table(runs_root(compose(overrides or []))), where)
        compared = compare_table(table, by=column, baseline=baseline)
        show(compare_rich(compared, column, baseline), lambda: format_frame(compared, fmt), fmt)


@report_app.command("diagnose")
def report_diagnose(
    diagnose_id: str = typer.Argument(..., help="A diagnose run id."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    fmt: str = typer.Option("table", "--format", "-f", help=FORMAT_HELP),
) -> None:
    """A diagnose's verdict panel again (json/csv/md: its evidence)."""
    from segaudit.core.config import compose
    from segaudit.report.terminal import check_format, evidence_frame, format_frame, verdict_panel
    from segaudit.runs.records import read_gate_record, runs_root

    with user_errors():
        check_format(fmt)
        gate_record = read_gate_record(runs_root(compose(overrides or [])), diagnose_id)
        show(verdict_panel(gate_record), lambda: format_frame(evidence_frame(gate_record), fmt), fmt)


@report_app.command("html")
def report_html(
    path: Path = typer.Argument(..., help="The .html file to write."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    diagnose_id: str | None = typer.Option(None, "--diagnose", help="Only this diagnose, its steps and gates."),
    where: list[str] = typer.Option([], "--where", "-w", help=WHERE_HELP),
) -> None:
    """One self-contained page: verdicts, evidence, pictures, gates and the run table."""
    from segaudit.core.config import compose
    from segaudit.report.html import write_html_report

    with user_errors():
        written = write_html_report(compose(overrides or []), path, where, diagnose_id, command_line())
        verdicts = ", ".join(f"{run_id} {name}" for run_id, name in written["verdicts"].items())
        err.print(
            f"wrote {written['path']}: {written['runs']} runs" + (f"; {verdicts}" if verdicts else ""),
            soft_wrap=True,
            highlight=False,
        )


@report_app.command("plots")
def report_plots(
    folder: Path = typer.Argument(..., help="Write the PNGs here."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    where: list[str] = typer.Option([], "--where", "-w", help=WHERE_HELP),
) -> None:
    """Every picture for these runs: curves, mIoU by input, evidence, samples, prior."""
    from segaudit.core.config import compose
    from segaudit.report.pictures import report_plots as draw
    from segaudit.report.terminal import filter_table
    from segaudit.runs.records import iter_records, load_table, runs_root

    with user_errors():
        cfg = compose(overrides or [])
        kept = set(filter_table(load_table(runs_root(cfg)), where).run_id)
        records = [r for r in iter_records(runs_root(cfg)) if r["run_id"] in kept]
        written = draw(runs_root(cfg), records, folder, str(cfg.device))
        err.print(f"wrote {len(written)} plot(s) to {folder}")


SCOPE_EPILOG = """[bold]Examples[/]\n
  segaudit scope                                   [dim]# over the completed runs under paths.runs[/]\n
  segaudit scope --where dataset=cityscapes        [dim]# over the runs the filters keep[/]\n
  segaudit scope --table results.csv --format json [dim]# e.g. the 339-model results[/]\n
  segaudit scope --table results.parquet gate.scope.strategy_spread_min=2\n\n
Exit code: 0, or 1 when the spread across strategies or datasets is suspiciously small."""


def scope(
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    table_file: Path | None = typer.Option(None, "--table", help="CSV/parquet with strategy, model, dataset, miou."),
    where: list[str] = typer.Option([], "--where", "-w", help=WHERE_HELP + " Not with --table."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | md"),
    phase: str | None = typer.Option(
        None, "--phase", help="Analyse this phase's runs (audit: models audited with `audit inventory`)."
    ),
) -> None:
    """Scope analysis: mIoU by strategy, model and dataset, and whether it is too uniform."""
    from segaudit.core.config import compose
    from segaudit.core.errors import ConfigError
    from segaudit.diagnostics.scope import run_scope
    from segaudit.report.terminal import SCOPE_FORMATS, check_format, filter_table, format_scope, scope_rich
    from segaudit.runs.records import load_table, runs_root
    from segaudit.workflows.outcomes import scope_outcome

    with user_errors():
        check_format(fmt, SCOPE_FORMATS)
        cfg = compose(overrides or [])
        if where and table_file is not None:
            raise ConfigError("--where filters the runs under paths.runs; a --table file is analysed whole")
        phase = phase or next((w.split("=", 1)[1] for w in where if w.startswith("phase=")), None)
        table = filter_table(load_table(runs_root(cfg)), where) if where else None
        result = run_scope(cfg, table_file, table=table, phase=phase)
        show(scope_rich(result), lambda: format_scope(result, fmt), fmt)
    finish(scope_outcome(result))
