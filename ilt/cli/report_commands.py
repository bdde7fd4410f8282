"""``ilt report``: every model's per-language error rates side by side, with
lineage; with several experiments, an ablation table."""

from __future__ import annotations

import click

from ilt.cli.options import list_option


@click.command("report")
@click.argument("exp_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, help="Which decoded set to report.")
@list_option("--models", metavar="NAME",
             help="Model names in order (repeatable or comma-separated; default: every decoded model).")
@click.option("--out", "out_path", type=click.Path(),
              help="Default: EXP_DIR/report/ (one experiment); with several, a markdown file to write.")
def report(exp_dirs: tuple[str, ...], split: str, models: tuple[str, ...], out_path: str | None) -> None:
    """Per-language (and per-accent) error rates of every model side by side, with lineage.

    With several EXP_DIRS (an ablation), one row per experiment's last model.
    """
    from ilt.core.files import write_text_atomic
    from ilt.reporting.report import ablation_table, write_report

    if len(exp_dirs) == 1:
        rep = write_report(exp_dirs[0], split, list(models) or None, out_path)
        click.echo(rep.to_markdown())
        return
    if models:
        raise click.UsageError("--models applies to a single EXP_DIR")
    table = ablation_table(list(exp_dirs), split)
    if out_path:
        write_text_atomic(out_path, table)
    click.echo(table)


COMMANDS: list[click.Command] = [report]
