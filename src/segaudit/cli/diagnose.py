"""The investigation's phase 1 and its parts: `diagnose`, `prior`, `suspects`, `probe`."""

from __future__ import annotations

from pathlib import Path

import typer

from segaudit.cli.common import (
    FACTORY_HELP,
    OVERRIDES_HELP,
    TRUST_HELP,
    command_line,
    err,
    finish,
    out,
    show,
    source_overrides,
    user_errors,
)

DIAGNOSE_EPILOG = """[bold]Examples[/]\n
  segaudit diagnose                                [dim]# phase 1 on the synthetic scenes[/]\n
  segaudit diagnose dataset=folder dataset.root=/data/mine diagnose.max_iters=6400\n
  segaudit diagnose train.iters=2000               [dim]# a fixed budget instead of stages[/]\n
  segaudit diagnose --no-noise-train gate=seed     [dim]# the investigation's literal gate[/]\n
  segaudit diagnose --plots out/                   [dim]# heatmaps, evidence, curves, samples[/]\n\n
Trains in stages (train.iters=auto: diagnose.first_iters, doubling, up to diagnose.max_iters)
until the evidence decides, unless train.iters is given.\n
Exit code: 0 HEALTHY, 1 PIPELINE_FAULT or SPATIAL_SHORTCUT, 2 bad input, 3 INCONCLUSIVE."""


def diagnose(
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    noise_train: bool = typer.Option(
        True, "--noise-train/--no-noise-train", help="Train on pure noise too (the prior predicts its result)."
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Use only the pairs that pass the data check."),
    plots: Path | None = typer.Option(None, "--plots", help="Write prior heatmaps, evidence, curves, samples here."),
    suspects: bool = typer.Option(
        True, "--suspects/--no-suspects", help="Score every pair with cross-fitted models (segaudit suspects)."
    ),
) -> None:
    """Phase 1: prior, baseline, shuffled-pairing and noise training, pair scoring, verdict, decision gate."""
    from segaudit.core.config import compose, override_keys
    from segaudit.report.terminal import verdict_panel
    from segaudit.workflows.diagnose import diagnose as run_diagnose
    from segaudit.workflows.outcomes import diagnose_outcome

    with user_errors():
        staged = [] if "train.iters" in override_keys(overrides or []) else ["train.iters=auto"]
        cfg = compose(
            [
                *staged,
                *(overrides or []),
                f"diagnose.noise_train={str(noise_train).lower()}",
                f"diagnose.suspects={str(suspects).lower()}",
                f"data_check.skip_bad={str(skip_bad).lower()}",
            ]
        )
        record = run_diagnose(cfg, command=command_line(), plots=plots)
        out.print(verdict_panel(record))
        if plots is not None:
            err.print(f"wrote {len(record['plots'])} plot(s) to {plots}")
    finish(diagnose_outcome(record))


PRIOR_EPILOG = """[bold]Examples[/]\n
  segaudit prior                                   [dim]# the synthetic dataset's location prior[/]\n
  segaudit prior dataset=folder dataset.root=data/synth --plots out/prior"""


def prior(
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    plots: Path | None = typer.Option(None, "--plots", help="Write one heatmap PNG per class here."),
) -> None:
    """The analytic prior: what a model that never looks at the image can score."""
    from segaudit.core.config import compose
    from segaudit.report.terminal import prior_panel
    from segaudit.workflows.prior import run_prior

    with user_errors():
        cfg = compose(overrides or [])
        record = run_prior(cfg, command=command_line())
        if plots is not None:
            from segaudit.report.pictures import prior_pictures

            prior_pictures(cfg, record, plots)
        out.print(prior_panel(record))


PROBE_EPILOG = """[bold]Examples[/]\n
  segaudit probe RUN_ID                            [dim]# a run, or a diagnose id (its baseline)[/]\n
  segaudit probe my_smp_dir/ dataset=folder dataset.root=/data/mine\n
  segaudit probe RUN_ID backbone_probe.iters=500\n\n
Trains a linear head on the frozen encoder, and on a random encoder of the same architecture."""


def probe(
    target: str = typer.Argument(..., help="A run id, a checkpoint, an smp folder or weights with --factory."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    factory: str | None = typer.Option(None, "--factory", help=FACTORY_HELP),
    trust_model: bool = typer.Option(False, "--trust-model", help=TRUST_HELP),
) -> None:
    """Frozen-backbone probe: how much content the encoder holds beyond a random one."""
    from segaudit.core.config import compose, override_keys
    from segaudit.report.terminal import backbone_probe_panel
    from segaudit.workflows.probe import run_probe

    with user_errors():
        cfg = compose([*(overrides or []), *source_overrides(factory, trust_model)])
        record = run_probe(
            cfg, target, command=command_line(), on_given_dataset="dataset" in override_keys(overrides or [])
        )
        out.print(backbone_probe_panel(record, cfg.backbone_probe.min_gain))


SUSPECTS_EPILOG = """[bold]Examples[/]\n
  segaudit suspects                                [dim]# the synthetic scenes' pairs[/]\n
  segaudit suspects dataset=folder dataset.root=/data/mine train.iters=2000\n
  segaudit suspects --diagnose DIAGNOSE_ID         [dim]# that diagnose's pair scores (or cross-fit its setup)[/]\n
  segaudit suspects --format json > pairs.json     [dim]# one object per scored pair[/]\n
  segaudit suspects --plots out/ --export pairs.csv\n\n
Each pair is scored by a model that never trained on it (suspects.folds cross-fitting): how
much better its mask fits the prediction on its own image than the label-only prior.\n
Exit code: 0, or 1 when the training pairs flagged exceed the val pairs flagged by more than
gate.suspects_max_share % (the val share is how often the same models flag a clean pair)."""


def suspects(
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    diagnose_id: str | None = typer.Option(None, "--diagnose", help="The pairs of this diagnose's dataset."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | csv | md (json/csv/md: every pair)"),
    export: Path | None = typer.Option(None, "--export", help="Also write every pair to FILE.csv or FILE.parquet."),
    plots: Path | None = typer.Option(None, "--plots", help="Write a grid of the top suspects here."),
    top: int = typer.Option(20, "--top", min=1, help="Flagged pairs shown in the table and the grid."),
) -> None:
    """Find the image/mask pairs that look misaligned or swapped (cross-fitted pair scores)."""
    import pandas as pd

    from segaudit.core.config import compose
    from segaudit.diagnostics.suspects import summary_line
    from segaudit.report.terminal import SUSPECT_COLUMNS, check_format, export_frame, format_frame, suspects_rich
    from segaudit.workflows.outcomes import suspects_outcome
    from segaudit.workflows.suspects import suspects as run_suspects

    with user_errors():
        check_format(fmt)
        cfg = compose(overrides or [])
        record, pairs = run_suspects(cfg, diagnose_id, command_line())
        frame = pd.DataFrame(pairs, columns=SUSPECT_COLUMNS)
        if export is not None:
            export_frame(frame, export)
            err.print(f"wrote {len(frame)} pairs to {export}")
        if plots is not None:
            from segaudit.report.pictures import suspect_pictures

            written = suspect_pictures(cfg, record, pairs, plots, top)
            err.print(f"wrote {len(written)} plot(s) to {plots}")
        show(suspects_rich(record, pairs, top), lambda: format_frame(frame, fmt), fmt)
        if fmt != "table":
            err.print(summary_line(record["suspects"]), highlight=False)
    finish(suspects_outcome(record, cfg.gate))
