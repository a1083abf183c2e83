"""`segaudit train` and `segaudit retrain`: one run, or a sweep of them."""

from __future__ import annotations

import os

import typer

from segaudit.cli.common import OVERRIDES_HELP, command_line, err, finish, out, user_errors


def train(
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Train on the pairs that pass the data check."),
) -> None:
    """Train one model and evaluate it; the run lands in the run table."""
    from segaudit.core.config import check_resume_overrides, compose
    from segaudit.report.terminal import rich_table
    from segaudit.runs.records import load_table
    from segaudit.train.engine import train as train_run

    with user_errors():
        check_resume_overrides(overrides or [])
        cfg = compose([*(overrides or []), *(["data_check.skip_bad=true"] if skip_bad else [])])
        record = train_run(cfg, command=command_line())
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
            table = load_table(cfg.paths.runs)
            out.print(rich_table(table[table.run_id == record["run_id"]], title="segaudit run"))


TRAIN_EPILOG = """[bold]Examples[/]\n
  segaudit train                                   [dim]# DeepLabV3+ on the embedded synthetic scenes[/]\n
  segaudit train model=segformer train.iters=50\n
  segaudit train dataset=folder dataset.root=/data/mine model.encoder=resnet50\n
  segaudit train resume=RUN_ID                     [dim]# continue a killed run from its checkpoint[/]"""


def retrain(
    overrides: list[str] | None = typer.Argument(
        None, help="retrain.* keys and Hydra overrides for each run, e.g. retrain.tier=2 retrain.models=\\[unet,pspnet]"
    ),
) -> None:
    """Phase 2A/2B: retrain a sweep of models x datasets x seeds with a loss tier."""
    from segaudit.core.config import compose
    from segaudit.workflows.outcomes import sweep_outcome
    from segaudit.workflows.retrain import retrain as run_retrain

    with user_errors():
        results = run_retrain(compose(overrides or []), list(overrides or []))
    for result in results:
        if result["status"] == "failed":
            err.print(f"[red]failed:[/] {result['run_id']}: {result.get('error', '')}", highlight=False)
    done = sum(r["status"] in ("completed", "skipped") for r in results)
    out.print(
        f"retrain: {done}/{len(results)} runs completed "
        f"({sum(r['status'] == 'skipped' for r in results)} were already done)"
    )
    finish(sweep_outcome(results))


# `\\[` keeps rich markup from reading a list override as a style tag.
RETRAIN_EPILOG = """[bold]Examples[/]\n
  segaudit retrain retrain.tier=2 retrain.models=\\[unet,pspnet] retrain.seeds=\\[0,1] retrain.jobs=2 train.iters=30\n
  segaudit retrain retrain.from_gate=DIAGNOSE_ID retrain.datasets=\\[cityscapes] dataset.root=/data/cs\n
  segaudit retrain retrain.tier=1 retrain.init_from=runs/RUN/checkpoint.pt retrain.freeze_encoder=true\n
  segaudit retrain retrain.tier=2 launcher=slurm launcher.partition=gpu launcher.timeout_min=600\n\n
The same command again skips completed runs and resumes interrupted ones. Every key is under
`retrain:` in segaudit's conf/config.yaml.\n
Exit code: 0 every run completed, 1 a run failed, 2 bad input."""
