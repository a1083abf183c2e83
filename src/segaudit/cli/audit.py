"""`segaudit audit model|inventory|export-inputs|score-predictions`: one model, every model
of a CSV, or the predictions of a model segaudit cannot run."""

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
    source_overrides,
    user_errors,
)
from segaudit.cli.legacy import RoutedGroup

audit_app = typer.Typer(
    cls=RoutedGroup,
    no_args_is_help=True,
    help="Evaluate a trained model on real, noise, blank and shuffled inputs; flag what is wrong.",
    epilog="""[bold]Examples[/]\n
  segaudit audit model RUN_ID                      [dim]# a run under paths.runs[/]\n
  segaudit audit model path/to/checkpoint.pt device=cuda\n
  segaudit audit model my_smp_dir/ dataset=folder dataset.root=/data/mine --reported-miou 40.1\n
  segaudit audit model model.onnx dataset=cityscapes dataset.root=/data/cs card.channels=bgr\n
  segaudit audit inventory models.csv --jobs 4     [dim]# every model of a CSV; again: only what is missing[/]\n
  segaudit audit export-inputs inputs/ dataset=cityscapes dataset.root=/data/cs  [dim]# then your inference[/]\n
  segaudit audit score-predictions preds/ dataset=cityscapes dataset.root=/data/cs\n\n
Exit code: 0 no red flag, 1 a red flag fired (inventory: or a row failed), 2 bad input.""",
)

AUDIT_ROUTES = (
    "give one of: audit model SOURCE, audit inventory FILE, audit export-inputs DIR, audit score-predictions DIR"
)


@audit_app.command("model")
def audit_model(
    target: str = typer.Argument(
        ...,
        help="A run id, a checkpoint, an smp save_pretrained folder, ONNX, "
        "weights with --factory, TorchScript/.pt2 with --trust-model.",
    ),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    plots: Path | None = typer.Option(None, "--plots", help="Write the sample grid and mIoU-by-input PNGs here."),
    factory: str | None = typer.Option(None, "--factory", help=FACTORY_HELP),
    trust_model: bool = typer.Option(False, "--trust-model", help=TRUST_HELP),
    reported_miou: float | None = typer.Option(
        None,
        "--reported-miou",
        help="The mIoU your own pipeline reported: says whether to look at training or evaluation.",
    ),
) -> None:
    """Audit one model: a run, a checkpoint or a model trained elsewhere."""
    from segaudit.core.config import compose, override_keys
    from segaudit.core.errors import ConfigError
    from segaudit.report.terminal import audit_panel
    from segaudit.workflows.audit import audit
    from segaudit.workflows.outcomes import audit_outcome

    with user_errors():
        if "=" in target:  # an override where the model should be
            raise ConfigError(AUDIT_ROUTES)
        reported = [] if reported_miou is None else [f"audit.reported_miou={reported_miou}"]
        cfg = compose([*(overrides or []), *source_overrides(factory, trust_model), *reported])
        record = audit(
            cfg, target, command=command_line(), on_given_dataset="dataset" in override_keys(overrides or [])
        )
        out.print(audit_panel(record))
        if plots is not None:
            from segaudit.report.pictures import audit_pictures

            err.print(f"wrote {len(audit_pictures(cfg, record, plots))} plot(s) to {plots}")
    finish(audit_outcome(record))


@audit_app.command("inventory")
def audit_inventory(
    inventory: Path = typer.Argument(..., help="A CSV of models: source, strategy, model, dataset, ..."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Parallel local processes."),
    launcher: str = typer.Option("local", "--launcher", help="local | slurm (submitit)."),
) -> None:
    """Audit every model of a CSV; the same command again audits only what is missing."""
    from segaudit.core.config import compose
    from segaudit.report.terminal import inventory_table
    from segaudit.workflows.inventory import audit_inventory as run_inventory
    from segaudit.workflows.outcomes import inventory_outcome

    with user_errors():
        cfg = compose([*(overrides or []), f"launcher={launcher}"])
        results = run_inventory(cfg, inventory, list(overrides or []), jobs)
        out.print(inventory_table(results))
    finish(inventory_outcome(results))


@audit_app.command("export-inputs")
def audit_export_inputs(
    folder: Path = typer.Argument(..., help="Write the val inputs of every condition here."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Write the val inputs of every input condition for your own inference (no model)."""
    from segaudit.core.config import compose
    from segaudit.workflows.predictions import export_inputs

    with user_errors():
        manifest = export_inputs(compose(overrides or []), folder)
        out.print(
            f"wrote {len(manifest['images'])} val images x {len(manifest['conditions'])} conditions "
            f"to {folder}; see {folder / 'manifest.json'} for what to write back"
        )


@audit_app.command("score-predictions")
def audit_score_predictions(
    folder: Path = typer.Argument(..., help="The label PNGs your inference wrote for `audit export-inputs`."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Score the predictions your own inference made on the exported inputs (no model)."""
    from segaudit.core.config import compose
    from segaudit.report.terminal import audit_panel
    from segaudit.workflows.outcomes import audit_outcome
    from segaudit.workflows.predictions import score_predictions

    with user_errors():
        record = score_predictions(compose(overrides or []), folder, command=command_line())
        out.print(audit_panel(record))
    finish(audit_outcome(record))
