"""The `segaudit` application: the root group, with every command registered from the
module of its group (`cli/<group>.py`)."""

from __future__ import annotations

import typer

from segaudit import __version__
from segaudit.cli import diagnose, report, train, validate
from segaudit.cli.audit import audit_app
from segaudit.cli.common import out
from segaudit.cli.data import data_app
from segaudit.cli.legacy import RootGroup
from segaudit.cli.report import report_app

app = typer.Typer(
    name="segaudit",
    cls=RootGroup,
    help="Does your segmentation model read the image? Train, audit and compare runs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        out.print(f"segaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """segaudit: sanity tests, loss tiers, gates and one run table for segmentation."""


app.command(epilog=train.TRAIN_EPILOG)(train.train)
app.command(epilog=diagnose.DIAGNOSE_EPILOG)(diagnose.diagnose)
app.command(epilog=diagnose.PRIOR_EPILOG)(diagnose.prior)
app.command(epilog=diagnose.SUSPECTS_EPILOG)(diagnose.suspects)
app.command(epilog=diagnose.PROBE_EPILOG)(diagnose.probe)
app.add_typer(audit_app, name="audit")
app.command(epilog=validate.VALIDATE_EPILOG)(validate.validate)
app.command(epilog=train.RETRAIN_EPILOG)(train.retrain)
app.add_typer(report_app, name="report")
report_app.command("scope", epilog=report.SCOPE_EPILOG)(report.scope)
app.command(epilog=report.SCOPE_EPILOG)(report.scope)
app.add_typer(data_app, name="data")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
