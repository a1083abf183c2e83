"""`segaudit data check|synth`: look at a dataset before any model does, or write the
embedded scenes to disk."""

from __future__ import annotations

from pathlib import Path

import typer

from segaudit.cli.common import OVERRIDES_HELP, err, finish, out, user_errors
from segaudit.core.errors import SegauditError

data_app = typer.Typer(help="Dataset tools.", no_args_is_help=True)


@data_app.command(
    "check",
    epilog="""[bold]Examples[/]\n
  segaudit data check dataset=folder dataset.root=/data/mine\n
  segaudit data check dataset=cityscapes dataset.root=/data/cityscapes --splits val\n\n
Exit code: 0 no errors (warnings allowed), 2 errors found or bad input.""",
)
def data_check(
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    splits: str = typer.Option("train,val", help="Comma-separated splits to check."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Run the transform alignment probe."),
) -> None:
    """Check pairs, decoding, sizes, label ids, ignore share and transform alignment."""
    from segaudit.core.config import compose
    from segaudit.diagnostics.data_check import run_check
    from segaudit.report.terminal import check_panel
    from segaudit.workflows.outcomes import data_check_outcome

    with user_errors():
        report, dcfg = run_check(compose(overrides or []), tuple(s for s in splits.split(",") if s), probe)
        for problem in report.problems:
            err.print(problem.line(), highlight=False, markup=False, soft_wrap=True)
        out.print(check_panel(report, list(dcfg.class_names)))
    finish(data_check_outcome(report))


@data_app.command(
    "synth",
    epilog="""[bold]Examples[/]\n
  segaudit data synth --out data/synth\n
  segaudit data synth --out data/hard --style texture  [dim]# classes as grey textures: learned slowly[/]\n
  segaudit data synth --out data/faint --style texture --content 1 --distinct car,person\n
  segaudit data synth --out data/big --n-train 2000 --size 128 --seed 1\n
  segaudit data synth --out data/cs --layout cityscapes --n-train 8 --n-val 4\n
  segaudit train dataset=folder dataset.root=data/synth""",
)
def data_synth(
    out_dir: Path = typer.Option(..., "--out", help="Folder to write (created)."),
    n_train: int = typer.Option(400, min=1, help="Training scenes."),
    n_val: int = typer.Option(100, min=1, help="Validation scenes."),
    n_test: int = typer.Option(100, min=0, help="Labelled test scenes (0: no test split)."),
    size: int = typer.Option(64, min=16, help="Height and width in pixels."),
    seed: int = typer.Option(0, help="Same seed, byte-identical files."),
    layout: str = typer.Option(
        "folder", help="folder | cityscapes (the official layout at 1024x2048, raw label ids: try dataset=cityscapes)"
    ),
    style: str = typer.Option(
        "colour",
        help="colour: a colour per class (learned in 100 steps) | texture: "
        "grey textures under one brightness law (learned slowly)",
    ),
    content: float = typer.Option(
        0.35,
        help="--style texture: how strongly classes stand out, 0..1 (0.35: the hard scenes of dataset=synthetic_hard)",
    ),
    distinct: str | None = typer.Option(
        None,
        help="--style texture: only these classes stand out, comma-separated (e.g. car,person: content nearly absent)",
    ),
) -> None:
    """Write the embedded procedural street scenes as a folder dataset."""
    from segaudit.data.synthetic import SynthSpec, check_style, write_cityscapes_layout, write_synthetic

    with user_errors():
        if layout not in ("folder", "cityscapes"):
            raise SegauditError(f"--layout {layout}: choose folder or cityscapes")
        spec = SynthSpec(
            n_train=n_train,
            n_val=n_val,
            size=size,
            seed=seed,
            n_test=n_test,
            distinct=None if distinct is None else tuple(distinct.split(",")),
            **check_style(style, content),
        )
        if out_dir.exists() and any(out_dir.iterdir()):
            raise SegauditError(f"{out_dir}: folder is not empty; choose a new --out")
        if layout == "cityscapes":
            write_cityscapes_layout(out_dir, {"train": n_train, "val": n_val}, seed=seed, spec=spec)
            size, n_test = "1024x2048", 0  # the preset's layout has train and val
        else:
            write_synthetic(out_dir, spec)
        out.print(
            f"wrote {n_train} train + {n_val} val + {n_test} test scenes ({size}px, {layout} "
            f"layout, {style} style) to {out_dir}"
        )
