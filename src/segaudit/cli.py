"""The `segaudit` command line. Each command composes the config and calls one function."""

from __future__ import annotations

import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.console import Console

from segaudit import __version__
from segaudit.errors import ConfigError, SegauditError, TrainingFailed

app = typer.Typer(
    name="segaudit",
    help="Does your segmentation model read the image? Train, audit and compare runs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Dataset tools.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Piped output has no terminal width to read; lay tables out for a 100-column terminal.
out = Console(width=None if sys.stdout.isatty() else 100)
err = Console(stderr=True)

OVERRIDES_HELP = "Hydra overrides, e.g. model=pspnet train.iters=300 paths.runs=DIR"
FACTORY_HELP = "package.module:function that builds the model the weights file is for."
TRUST_HELP = "Load TorchScript / torch.export (.pt2) models, which run their own code when loaded."


def _source_overrides(factory: str | None, trust_model: bool) -> list[str]:
    """The external-model flags as the config keys they set (`source.*`)."""
    return ([f"source.factory='{factory}'"] if factory else []) + (["source.trust=true"] if trust_model else [])


@contextmanager
def user_errors():
    """Bad input ends in one line on stderr and exit code 2; a failed run in exit code 1."""
    try:
        yield
    except SegauditError as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    except TrainingFailed as error:
        err.print(f"[bold red]run failed:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None


def _command_line() -> str:
    return shlex.join(["segaudit", *sys.argv[1:]])


def _version(value: bool) -> None:
    if value:
        out.print(f"segaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """segaudit: sanity tests, loss tiers, gates and one run table for segmentation."""


@app.command(epilog="""[bold]Examples[/]\n
  segaudit train                                   [dim]# DeepLabV3+ on the embedded synthetic scenes[/]\n
  segaudit train model=segformer train.iters=50\n
  segaudit train dataset=folder dataset.root=/data/mine model.encoder=resnet50\n
  segaudit train resume=RUN_ID                     [dim]# continue a killed run from its checkpoint[/]""")
def train(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Train on the pairs that pass the data check."),
) -> None:
    """Train one model and evaluate it; the run lands in the run table."""
    from segaudit.config import check_resume_overrides, compose
    from segaudit.engine import train as train_run
    from segaudit.report import rich_table
    from segaudit.runs import load_table

    with user_errors():
        check_resume_overrides(overrides or [])
        cfg = compose([*(overrides or []), *(["data_check.skip_bad=true"] if skip_bad else [])])
        record = train_run(cfg, command=_command_line())
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
            table = load_table(cfg.paths.runs)
            out.print(rich_table(table[table.run_id == record["run_id"]], title="segaudit run"))


@app.command(epilog="""[bold]Examples[/]\n
  segaudit report                                  [dim]# every run under ./runs[/]\n
  segaudit report --where phase=train --where status=completed\n
  segaudit report --format json paths.runs=/shared/runs\n
  segaudit report --export results.parquet\n
  segaudit report --diagnose DIAGNOSE_ID           [dim]# the verdict panel again[/]\n
  segaudit report --compare strategy               [dim]# before/after against strategy=baseline[/]\n
  segaudit report --scope                          [dim]# mIoU by strategy, model, dataset[/]\n
  segaudit report --classes RUN                    [dim]# per class: shares, prior/real/noise IoU[/]\n
  segaudit report --plots out/                     [dim]# every picture for these runs[/]\n
  segaudit report --html report.html               [dim]# one self-contained page to share[/]\n
  segaudit report --diagnose ID --html d.html      [dim]# one diagnose, its steps, gates[/]""")
def report(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    diagnose_id: Optional[str] = typer.Option(None, "--diagnose", help="Show this diagnose's verdict panel."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Per-class table of a train, audit or diagnose RUN."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Before/after by this column (e.g. strategy)."),
    scope_view: bool = typer.Option(False, "--scope", help="The scope analysis of these runs."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write curves, mIoU-by-input, evidence, samples, prior PNGs here."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write one self-contained HTML page (verdict, evidence, pictures, gates, runs)."),
    baseline: str = typer.Option("baseline", "--baseline", help="The group --compare measures deltas against."),
    where: List[str] = typer.Option([], "--where", "-w", help="Keep runs with key=value (repeatable)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | csv | md"),
    export: Optional[Path] = typer.Option(None, "--export", help="Also write the table to FILE.csv or FILE.parquet."),
) -> None:
    """Show the run table (every run under paths.runs)."""
    from segaudit.config import compose
    from segaudit.report import (check_format, compare_rich, evidence_frame, export_frame, filter_table,
                                 format_frame, format_scope, no_runs_line, rich_table, scope_rich,
                                 verdict_panel, MARKDOWN_COLUMNS)
    from segaudit.runs import iter_records, load_table, read_gate_record, runs_root
    from segaudit.scope import compare_table, run_scope

    with user_errors():
        check_format(fmt)
        cfg = compose(overrides or [])
        if classes is not None:
            from segaudit.classes import class_table
            from segaudit.report import class_rich

            frame = class_table(cfg, classes)
            if plots is not None:
                from segaudit.plots import class_bars

                err.print(f"wrote {class_bars(frame, plots / f'classes_{classes}.png', classes)}")
            _show(class_rich(frame, classes), lambda: format_frame(frame, fmt), fmt)
            return
        if html is not None:
            from segaudit.html_report import write_html_report

            written = write_html_report(cfg, html, where, diagnose_id, _command_line())
            verdicts = ", ".join(f"{run_id} {name}" for run_id, name in written["verdicts"].items())
            err.print(f"wrote {written['path']}: {written['runs']} runs" + (f"; {verdicts}" if verdicts else ""),
                      soft_wrap=True, highlight=False)
            return
        if diagnose_id is not None:
            gate_record = read_gate_record(runs_root(cfg), diagnose_id)
            _show(verdict_panel(gate_record), lambda: format_frame(evidence_frame(gate_record), fmt), fmt)
            return
        table = filter_table(load_table(runs_root(cfg)), where)
        if plots is not None:
            from segaudit.pictures import report_plots

            kept = set(table.run_id)
            records = [r for r in iter_records(runs_root(cfg)) if r["run_id"] in kept]
            written = report_plots(runs_root(cfg), records, plots, str(cfg.device))
            err.print(f"wrote {len(written)} plot(s) to {plots}")
        if scope_view:
            phases = [w.split("=", 1)[1] for w in where if w.startswith("phase=")]  # --where phase=audit
            result = run_scope(cfg, table=table, phase=phases[0] if phases else None)
            _show(scope_rich(result), lambda: format_scope(result, fmt), fmt)
            return
        if compare is not None:
            compared = compare_table(table, by=compare, baseline=baseline)
            _show(compare_rich(compared, compare, baseline), lambda: format_frame(compared, fmt), fmt)
            return
        if export is not None:
            export_frame(table, export)
            err.print(f"wrote {len(table)} runs to {export}")
        if fmt == "table" and table.empty:
            err.print(no_runs_line(runs_root(cfg), where), soft_wrap=True, highlight=False)
            return
        _show(rich_table(table, title=f"runs in {cfg.paths.runs}"),
              lambda: format_frame(table, fmt, MARKDOWN_COLUMNS), fmt)


def _show(rich_view, text_view, fmt: str) -> None:
    """The rich view on a terminal (`--format table`), else the text `text_view()` returns."""
    if fmt == "table":
        out.print(rich_view)
    else:
        typer.echo(text_view().rstrip("\n"))


@app.command(epilog="""[bold]Examples[/]\n
  segaudit prior                                   [dim]# the synthetic dataset's location prior[/]\n
  segaudit prior dataset=folder dataset.root=data/synth --plots out/prior""")
def prior(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write one heatmap PNG per class here."),
) -> None:
    """The analytic prior: what a model that never looks at the image can score."""
    from segaudit.config import compose
    from segaudit.prior import run_prior
    from segaudit.report import prior_panel

    with user_errors():
        cfg = compose(overrides or [])
        record = run_prior(cfg, command=_command_line())
        if plots is not None:
            from segaudit.pictures import prior_pictures

            prior_pictures(cfg, record, plots)
        out.print(prior_panel(record))


@app.command(epilog="""[bold]Examples[/]\n
  segaudit audit RUN_ID                            [dim]# a run under paths.runs[/]\n
  segaudit audit path/to/checkpoint.pt device=cuda\n
  segaudit audit RUN_ID --plots out/               [dim]# image / truth / real / noise grid[/]\n
  segaudit audit my_smp_dir/ dataset=folder dataset.root=/data/mine --reported-miou 40.1\n
  segaudit audit model.onnx dataset=cityscapes dataset.root=/data/cs card.channels=bgr\n
  segaudit audit --inventory models.csv --jobs 4   [dim]# every model of a CSV; again: only what is missing[/]\n
  segaudit audit --export-inputs inputs/ dataset=cityscapes dataset.root=/data/cs  [dim]# then your inference[/]\n
  segaudit audit --predictions preds/ dataset=cityscapes dataset.root=/data/cs\n\n
Exit code: 0 no red flag, 1 a red flag fired (inventory: or a row failed), 2 bad input.""")
def audit(
    target: Optional[str] = typer.Argument(None, help="A run id, a checkpoint, an smp save_pretrained folder, ONNX, "
                                                      "weights with --factory, TorchScript/.pt2 with --trust-model."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write the sample grid and mIoU-by-input PNGs here."),
    factory: Optional[str] = typer.Option(None, "--factory", help=FACTORY_HELP),
    trust_model: bool = typer.Option(False, "--trust-model", help=TRUST_HELP),
    reported_miou: Optional[float] = typer.Option(
        None, "--reported-miou", help="The mIoU your own pipeline reported: says whether to look at training or evaluation."),
    export_inputs: Optional[Path] = typer.Option(
        None, "--export-inputs", help="Write the val inputs of every condition here for your own inference (no model)."),
    predictions: Optional[Path] = typer.Option(
        None, "--predictions", help="Score the label PNGs your inference wrote for --export-inputs (no model)."),
    inventory: Optional[Path] = typer.Option(
        None, "--inventory", help="Audit every model of a CSV (source, strategy, model, dataset, ...)."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="--inventory: parallel local processes."),
    launcher: str = typer.Option("local", "--launcher", help="--inventory: local | slurm (submitit)."),
) -> None:
    """Evaluate a trained model on real, noise, blank and shuffled inputs; flag what is wrong."""
    from segaudit.audit import audit as run_audit
    from segaudit.config import compose, override_keys
    from segaudit.report import audit_panel

    with user_errors():
        if target is not None and "=" in target:  # no model given: the first word is an override
            target, overrides = None, [target, *(overrides or [])]
        routes = [route for route, given in (("a model", target), ("--export-inputs", export_inputs),
                                             ("--predictions", predictions), ("--inventory", inventory))
                  if given is not None]
        if len(routes) != 1:
            raise ConfigError("give one of: a model to audit, --export-inputs DIR, --predictions DIR, "
                              "--inventory FILE")
        if plots is not None and target is None:
            raise ConfigError("--plots draws a model's predictions: give a model, not --export-inputs/--predictions")
        reported = [] if reported_miou is None else [f"audit.reported_miou={reported_miou}"]
        cfg = compose([*(overrides or []), *_source_overrides(factory, trust_model), *reported,
                       f"launcher={launcher}"])
        if inventory is not None:
            from segaudit.inventory import audit_inventory
            from segaudit.report import inventory_table

            results = audit_inventory(cfg, inventory, list(overrides or []), jobs)
            out.print(inventory_table(results))
            raise typer.Exit(1 if any(r["status"] == "failed" or r["red_flags"] for r in results) else 0)
        if export_inputs is not None:
            from segaudit.predictions import export_inputs as write_inputs

            manifest = write_inputs(cfg, export_inputs)
            out.print(f"wrote {len(manifest['images'])} val images x {len(manifest['conditions'])} conditions "
                      f"to {export_inputs}; see {export_inputs / 'manifest.json'} for what to write back")
            return
        if predictions is not None:
            from segaudit.predictions import score_predictions

            record = score_predictions(cfg, predictions, command=_command_line())
        else:
            record = run_audit(cfg, target, command=_command_line(),
                               on_given_dataset="dataset" in override_keys(overrides or []))
        out.print(audit_panel(record))
        if plots is not None:
            from segaudit.pictures import audit_pictures

            err.print(f"wrote {len(audit_pictures(cfg, record, plots))} plot(s) to {plots}")
    raise typer.Exit(1 if record["audit"]["red_flags"] else 0)


@app.command(epilog="""[bold]Examples[/]\n
  segaudit validate RUN_ID                         [dim]# noise, robustness, generalization gates[/]\n
  segaudit validate DIAGNOSE_ID                    [dim]# the baseline model that diagnose trained[/]\n
  segaudit validate RUN_A RUN_B                    [dim]# + the cross-dataset matrix of their datasets[/]\n
  segaudit validate RUN_ID --cross bdd10k=/data/bdd10k gate=seed\n\n
Exit code: 0 every gate passed (or was skipped), 1 a gate failed, 2 bad input.""")
def validate(
    targets: List[str] = typer.Argument(..., help="Run ids (a diagnose id: its baseline) or checkpoint files, then overrides."),
    cross: List[str] = typer.Option([], "--cross", help="Also evaluate on PRESET[=ROOT] or FILE.yaml[=ROOT] (repeatable)."),
    factory: Optional[str] = typer.Option(None, "--factory", help=FACTORY_HELP),
    trust_model: bool = typer.Option(False, "--trust-model", help=TRUST_HELP),
) -> None:
    """Phase 3: the validation gates (noise, robustness, generalization, cross-dataset)."""
    from segaudit.config import compose, override_keys
    from segaudit.report import cross_matrix_table, validate_panel
    from segaudit.validate import validate as run_validate

    with user_errors():
        runs_or_files = [t for t in targets if "=" not in t]
        overrides = [t for t in targets if "=" in t]
        result = run_validate(compose([*overrides, *_source_overrides(factory, trust_model)]),
                              runs_or_files, cross, command=_command_line(),
                              dataset_given="dataset" in override_keys(overrides))
        for record in result["records"]:
            out.print(validate_panel(record))
        matrix = cross_matrix_table(result["matrix"])
        if matrix is not None:
            out.print(matrix)
    raise typer.Exit(0 if result["passed"] else 1)


@app.command(epilog="""[bold]Examples[/]\n
  segaudit diagnose                                [dim]# phase 1 on the synthetic scenes[/]\n
  segaudit diagnose dataset=folder dataset.root=/data/mine diagnose.max_iters=6400\n
  segaudit diagnose train.iters=2000               [dim]# a fixed budget instead of stages[/]\n
  segaudit diagnose --no-noise-train gate=seed     [dim]# the investigation's literal gate[/]\n
  segaudit diagnose --plots out/                   [dim]# heatmaps, evidence, curves, samples[/]\n\n
Trains in stages (train.iters=auto: diagnose.first_iters, doubling, up to diagnose.max_iters)
until the evidence decides, unless train.iters is given.\n
Exit code: 0 HEALTHY, 1 PIPELINE_FAULT or SPATIAL_SHORTCUT, 2 bad input, 3 INCONCLUSIVE.""")
def diagnose(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    noise_train: bool = typer.Option(True, "--noise-train/--no-noise-train",
                                     help="Train on pure noise too (the prior predicts its result)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Use only the pairs that pass the data check."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write prior heatmaps, evidence, curves, samples here."),
    suspects: bool = typer.Option(True, "--suspects/--no-suspects",
                                  help="Score every pair with cross-fitted models (segaudit suspects)."),
) -> None:
    """Phase 1: prior, baseline, shuffled-pairing and noise training, pair scoring, verdict, decision gate."""
    from segaudit.config import compose, override_keys
    from segaudit.phases import diagnose as run_diagnose
    from segaudit.report import verdict_panel
    from segaudit.verdict import EXIT_CODES

    with user_errors():
        staged = [] if "train.iters" in override_keys(overrides or []) else ["train.iters=auto"]
        cfg = compose([*staged, *(overrides or []), f"diagnose.noise_train={str(noise_train).lower()}",
                       f"diagnose.suspects={str(suspects).lower()}",
                       f"data_check.skip_bad={str(skip_bad).lower()}"])
        record = run_diagnose(cfg, command=_command_line(), plots=plots)
        out.print(verdict_panel(record))
        if plots is not None:
            err.print(f"wrote {len(record['plots'])} plot(s) to {plots}")
    raise typer.Exit(EXIT_CODES[record["verdict"]])


@app.command(epilog="""[bold]Examples[/]\n
  segaudit retrain --tier 2 --models unet,pspnet --datasets synthetic --seeds 0,1 --jobs 2 train.iters=30\n
  segaudit retrain --from-gate DIAGNOSE_ID --models deeplabv3plus --datasets cityscapes dataset.root=/data/cs\n
  segaudit retrain --tier 1 --init-from runs/RUN/checkpoint.pt --freeze-encoder\n
  segaudit retrain --tier 2 --launcher slurm launcher.partition=gpu launcher.timeout_min=600\n\n
The same command again skips completed runs and resumes interrupted ones.""")
def retrain(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    tier: Optional[int] = typer.Option(None, "--tier", help="Loss tier: 1 (phase 2A), 2 (phase 2B) or 3."),
    from_gate: Optional[str] = typer.Option(None, "--from-gate", help="Take the tier a diagnose's gate chose."),
    models: str = typer.Option("deeplabv3plus", help="Comma-separated conf/model options."),
    datasets: str = typer.Option("synthetic", help="Comma-separated conf/dataset options."),
    seeds: str = typer.Option("0", help="Comma-separated seeds."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Parallel local processes."),
    launcher: str = typer.Option("local", "--launcher", help="local | slurm (submitit)."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Label for the runs (default tierN)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start every run from this checkpoint."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Keep the encoder fixed."),
) -> None:
    """Phase 2A/2B: retrain a sweep of models x datasets x seeds with a loss tier."""
    from segaudit.config import compose
    from segaudit.sweep import retrain as run_retrain

    with user_errors():
        try:
            seed_list = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise SegauditError(f"--seeds {seeds}: expected comma-separated integers") from None
        cfg = compose([*(overrides or []), f"launcher={launcher}"])
        results = run_retrain(cfg, list(overrides or []), tier, from_gate, models.split(","),
                              datasets.split(","), seed_list, jobs, strategy, init_from, freeze_encoder)
    failed = [r for r in results if r["status"] == "failed"]
    for result in failed:
        err.print(f"[red]failed:[/] {result['run_id']}: {result.get('error', '')}", highlight=False)
    done = sum(r["status"] in ("completed", "skipped") for r in results)
    out.print(f"retrain: {done}/{len(results)} runs completed "
              f"({sum(r['status'] == 'skipped' for r in results)} were already done)")
    raise typer.Exit(1 if failed else 0)


@app.command(epilog="""[bold]Examples[/]\n
  segaudit scope                                   [dim]# over the completed runs under paths.runs[/]\n
  segaudit scope --table results.csv --format json [dim]# e.g. the 339-model results[/]\n
  segaudit scope --table results.parquet gate.scope.strategy_spread_min=2\n\n
Exit code: 0, or 1 when the spread across strategies or datasets is suspiciously small.""")
def scope(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    table_file: Optional[Path] = typer.Option(None, "--table", help="CSV/parquet with strategy, model, dataset, miou."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | md"),
    phase: Optional[str] = typer.Option(None, "--phase", help="Analyse this phase's runs (audit: models audited with --inventory)."),
) -> None:
    """Scope analysis: mIoU by strategy, model and dataset, and whether it is too uniform."""
    from segaudit.config import compose
    from segaudit.report import SCOPE_FORMATS, check_format, format_scope, scope_rich
    from segaudit.scope import run_scope

    with user_errors():
        check_format(fmt, SCOPE_FORMATS)
        result = run_scope(compose(overrides or []), table_file, phase=phase)
        _show(scope_rich(result), lambda: format_scope(result, fmt), fmt)
    raise typer.Exit(1 if result["systematic"] else 0)


@app.command(epilog="""[bold]Examples[/]\n
  segaudit probe RUN_ID                            [dim]# a run, or a diagnose id (its baseline)[/]\n
  segaudit probe my_smp_dir/ dataset=folder dataset.root=/data/mine\n
  segaudit probe RUN_ID backbone_probe.iters=500\n\n
Trains a linear head on the frozen encoder, and on a random encoder of the same architecture.""")
def probe(
    target: str = typer.Argument(..., help="A run id, a checkpoint, an smp folder or weights with --factory."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    factory: Optional[str] = typer.Option(None, "--factory", help=FACTORY_HELP),
    trust_model: bool = typer.Option(False, "--trust-model", help=TRUST_HELP),
) -> None:
    """Frozen-backbone probe: how much content the encoder holds beyond a random one."""
    from segaudit.backbone_probe import run_probe
    from segaudit.config import compose, override_keys
    from segaudit.report import backbone_probe_panel

    with user_errors():
        cfg = compose([*(overrides or []), *_source_overrides(factory, trust_model)])
        record = run_probe(cfg, target, command=_command_line(),
                           on_given_dataset="dataset" in override_keys(overrides or []))
        out.print(backbone_probe_panel(record, cfg.backbone_probe.min_gain))


@app.command(epilog="""[bold]Examples[/]\n
  segaudit suspects                                [dim]# the synthetic scenes' pairs[/]\n
  segaudit suspects dataset=folder dataset.root=/data/mine train.iters=2000\n
  segaudit suspects --diagnose DIAGNOSE_ID         [dim]# that diagnose's pair scores (or cross-fit its setup)[/]\n
  segaudit suspects --format json > pairs.json     [dim]# one object per scored pair[/]\n
  segaudit suspects --plots out/ --export pairs.csv\n\n
Each pair is scored by a model that never trained on it (suspects.folds cross-fitting): how
much better its mask fits the prediction on its own image than the label-only prior.\n
Exit code: 0, or 1 when the training pairs flagged exceed the val pairs flagged by more than
gate.suspects_max_share % (the val share is how often the same models flag a clean pair).""")
def suspects(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    diagnose_id: Optional[str] = typer.Option(None, "--diagnose", help="The pairs of this diagnose's dataset."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | csv | md (json/csv/md: every pair)"),
    export: Optional[Path] = typer.Option(None, "--export", help="Also write every pair to FILE.csv or FILE.parquet."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write a grid of the top suspects here."),
    top: int = typer.Option(20, "--top", min=1, help="Flagged pairs shown in the table and the grid."),
) -> None:
    """Find the image/mask pairs that look misaligned or swapped (cross-fitted pair scores)."""
    import pandas as pd

    from segaudit.config import compose
    from segaudit.report import SUSPECT_COLUMNS, check_format, export_frame, format_frame, suspects_rich
    from segaudit.suspects import suspects as run_suspects, summary_line, too_many_flagged

    with user_errors():
        check_format(fmt)
        cfg = compose(overrides or [])
        record, pairs = run_suspects(cfg, diagnose_id, _command_line())
        frame = pd.DataFrame(pairs, columns=SUSPECT_COLUMNS)
        if export is not None:
            export_frame(frame, export)
            err.print(f"wrote {len(frame)} pairs to {export}")
        if plots is not None:
            from segaudit.pictures import suspect_pictures

            written = suspect_pictures(cfg, record, pairs, plots, top)
            err.print(f"wrote {len(written)} plot(s) to {plots}")
        _show(suspects_rich(record, pairs, top), lambda: format_frame(frame, fmt), fmt)
        if fmt != "table":
            err.print(summary_line(record["suspects"]), highlight=False)
    raise typer.Exit(1 if too_many_flagged(record, cfg.gate) else 0)


@data_app.command("check", epilog="""[bold]Examples[/]\n
  segaudit data check dataset=folder dataset.root=/data/mine\n
  segaudit data check dataset=cityscapes dataset.root=/data/cityscapes --splits val\n\n
Exit code: 0 no errors (warnings allowed), 2 errors found or bad input.""")
def data_check(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    splits: str = typer.Option("train,val", help="Comma-separated splits to check."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Run the transform alignment probe."),
) -> None:
    """Check pairs, decoding, sizes, label ids, ignore share and transform alignment."""
    from segaudit.config import compose
    from segaudit.data.check import run_check
    from segaudit.report import check_panel

    with user_errors():
        report, dcfg = run_check(compose(overrides or []), tuple(s for s in splits.split(",") if s), probe)
        for problem in report.problems:
            err.print(problem.line(), highlight=False, markup=False, soft_wrap=True)
        out.print(check_panel(report, list(dcfg.class_names)))
    raise typer.Exit(2 if report.errors else 0)


@data_app.command("synth", epilog="""[bold]Examples[/]\n
  segaudit data synth --out data/synth\n
  segaudit data synth --out data/hard --style texture  [dim]# classes as grey textures: learned slowly[/]\n
  segaudit data synth --out data/faint --style texture --content 1 --distinct car,person\n
  segaudit data synth --out data/big --n-train 2000 --size 128 --seed 1\n
  segaudit data synth --out data/cs --layout cityscapes --n-train 8 --n-val 4\n
  segaudit train dataset=folder dataset.root=data/synth""")
def data_synth(
    out_dir: Path = typer.Option(..., "--out", help="Folder to write (created)."),
    n_train: int = typer.Option(400, min=1, help="Training scenes."),
    n_val: int = typer.Option(100, min=1, help="Validation scenes."),
    n_test: int = typer.Option(100, min=0, help="Labelled test scenes (0: no test split)."),
    size: int = typer.Option(64, min=16, help="Height and width in pixels."),
    seed: int = typer.Option(0, help="Same seed, byte-identical files."),
    layout: str = typer.Option("folder", help="folder | cityscapes (the official layout at 1024x2048, "
                                              "raw label ids: try dataset=cityscapes)"),
    style: str = typer.Option("colour", help="colour: a colour per class (learned in 100 steps) | texture: "
                                             "grey textures under one brightness law (learned slowly)"),
    content: float = typer.Option(0.35, help="--style texture: how strongly classes stand out, 0..1 "
                                            "(0.35: the hard scenes of dataset=synthetic_hard)"),
    distinct: Optional[str] = typer.Option(None, help="--style texture: only these classes stand out, "
                                                      "comma-separated (e.g. car,person: content nearly absent)"),
) -> None:
    """Write the embedded procedural street scenes as a folder dataset."""
    from segaudit.data.synthetic import SynthSpec, check_style, write_cityscapes_layout, write_synthetic

    with user_errors():
        if layout not in ("folder", "cityscapes"):
            raise SegauditError(f"--layout {layout}: choose folder or cityscapes")
        spec = SynthSpec(n_train=n_train, n_val=n_val, size=size, seed=seed, n_test=n_test,
                         distinct=None if distinct is None else tuple(distinct.split(",")),
                         **check_style(style, content))
        if out_dir.exists() and any(out_dir.iterdir()):
            raise SegauditError(f"{out_dir}: folder is not empty; choose a new --out")
        if layout == "cityscapes":
            write_cityscapes_layout(out_dir, {"train": n_train, "val": n_val}, seed=seed, spec=spec)
            size, n_test = "1024x2048", 0  # the preset's layout has train and val
        else:
            write_synthetic(out_dir, spec)
        out.print(f"wrote {n_train} train + {n_val} val + {n_test} test scenes ({size}px, {layout} "
                  f"layout, {style} style) to {out_dir}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
