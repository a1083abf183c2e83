"""`segaudit validate`: the investigation's phase 3 gates."""

from __future__ import annotations

import typer

from segaudit.cli.common import FACTORY_HELP, TRUST_HELP, command_line, finish, out, source_overrides, user_errors

VALIDATE_EPILOG = """[bold]Examples[/]\n
  segaudit validate RUN_ID                         [dim]# noise, robustness, generalization gates[/]\n
  segaudit validate DIAGNOSE_ID                    [dim]# the baseline model that diagnose trained[/]\n
  segaudit validate RUN_A RUN_B                    [dim]# + the cross-dataset matrix of their datasets[/]\n
  segaudit validate RUN_ID --cross bdd10k=/data/bdd10k gate=seed\n\n
Exit code: 0 every gate passed (or was skipped), 1 a gate failed, 2 bad input."""


def validate(
    targets: list[str] = typer.Argument(
        ..., help="Run ids (a diagnose id: its baseline) or checkpoint files, then overrides."
    ),
    cross: list[str] = typer.Option(
        [], "--cross", help="Also evaluate on PRESET[=ROOT] or FILE.yaml[=ROOT] (repeatable)."
    ),
    factory: str | None = typer.Option(None, "--factory", help=FACTORY_HELP),
    trust_model: bool = typer.Option(False, "--trust-model", help=TRUST_HELP),
) -> None:
    """Phase 3: the validation gates (noise, robustness, generalization, cross-dataset)."""
    from segaudit.core.config import compose, override_keys
    from segaudit.report.terminal import cross_matrix_table, validate_panel
    from segaudit.workflows.outcomes import validate_outcome
    from segaudit.workflows.validate import validate as run_validate

    with user_errors():
        runs_or_files = [t for t in targets if "=" not in t]
        overrides = [t for t in targets if "=" in t]
        result = run_validate(
            compose([*overrides, *source_overrides(factory, trust_model)]),
            runs_or_files,
            cross,
            command=command_line(),
            dataset_given="dataset" in override_keys(overrides),
        )
        for record in result["records"]:
            out.print(validate_panel(record))
        matrix = cross_matrix_table(result["matrix"])
        if matrix is not None:
            out.print(matrix)
    finish(validate_outcome(result))
