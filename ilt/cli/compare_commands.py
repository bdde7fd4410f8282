"""``ilt compare``: decodes of the same cuts side by side, each difference from
the baseline with a paired bootstrap interval and paired tests
(over :func:`ilt.asr.compare.compare_files`)."""

from __future__ import annotations

import click

from ilt.cli.options import list_option, save_command


def _named(values: tuple[str, ...]) -> list[tuple[str, str | list[str]]]:
    """``NAME=PATH`` or ``PATH`` (named after its directory) for each system;
    ``PATH,PATH,...`` pools several decodes (of disjoint test sets) into one system."""
    from pathlib import Path

    named: list[tuple[str, str | list[str]]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value.split(",")[0].rstrip("/")).name or value, value
        paths = [p for p in path.split(",") if p]
        named.append((name, paths if len(paths) > 1 else path))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise click.UsageError(f"two systems share a name ({', '.join(names)}); name them as NAME=PATH")
    return named


@click.command("compare")
@click.argument("systems", nargs=-1, required=True)
@list_option("--ref", "ref_path", type=click.Path(exists=True, dir_okay=False),
             help="Reference cuts: score each system's hypotheses on them (needed for --cluster-by and for "
                  "decode directories that were not scored); several (repeated or comma-separated) for "
                  "pooled test sets.")
@click.option("--cluster-by", type=click.Choice(["utterance", "recording", "speaker"]), default="utterance",
              show_default=True, help="What the bootstrap resamples: utterances, or whole recordings "
                                      "(conversations) or speakers, whose utterances are not independent.")
@click.option("--rounds", type=click.IntRange(min=100), default=10000, show_default=True,
              help="Bootstrap resamples and permutation rounds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the resampling (results repeat).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Also write compare.md and compare.json here.")
def compare(systems, ref_path, cluster_by, rounds, seed, out_dir):
    """Compare SYSTEMS (decode or score directories, or hypothesis files; NAME=PATH
    to name them; NAME=PATH,PATH,... pools decodes of several test sets) on the same
    cuts. The first is the baseline: each other system's pooled error-rate difference
    from it, per language and overall, with a paired bootstrap 95% interval, a paired
    permutation p-value and a sign test."""
    from ilt.asr.compare import compare_files

    if len(systems) < 2:
        raise click.UsageError("give at least two systems: the baseline first")
    markdown, _ = compare_files(_named(systems), out_dir, ref=list(ref_path) or None, cluster_by=cluster_by,
                                rounds=rounds, seed=seed)
    if out_dir:
        save_command(out_dir)
    click.echo(markdown)


COMMANDS = [compare]
