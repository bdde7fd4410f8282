"""``ilt select``: keep third-party cuts whose speakers sound like the reference
speakers (over :func:`ilt.knowledge.speaker_select.select_cuts`)."""

from __future__ import annotations

from pathlib import Path

import click

from ilt.cli.options import parse_component, save_command


@click.command("select")
@click.option("--selector", default="resemblyzer", show_default=True,
              help="A registered selector (resemblyzer, wavlm; see `ilt plugins`), or YAML with options: "
                   "'{name: wavlm, model_dir: DIR, batch_size: 8}'.")
@click.option("--reference", "reference_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Reference cuts (the official data): their speakers' mean embeddings.")
@click.option("--candidates", "candidates_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Candidate cuts (the third-party pool) to keep or leave out.")
@click.option("--threshold", type=click.FloatRange(-1.0, 1.0), default=None,
              help="Keep candidates whose similarity to the nearest reference speaker is above this "
                   "[default: 0.85, the paper's SECS threshold].")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Embedding cache, by cut ID, selector and model [default: OUT/embeddings].")
@click.option("--png", is_flag=True, help="Also plot the histogram as histogram.png.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Writes cuts.jsonl.gz (kept, with select_score), scores.jsonl, histogram.md, summary.json.")
def select(selector, reference_path, candidates_path, threshold, cache_dir, png, out_dir):
    """Keep the candidates whose speaker similarity (SECS) to the reference is above the threshold."""
    from ilt.knowledge.speaker_select import CUTS, HISTOGRAM_MD, select_cuts

    spec = parse_component(selector, "--selector")
    summary = select_cuts(spec, reference_path, candidates_path, out_dir, threshold=threshold,
                          cache_dir=cache_dir or Path(out_dir) / "embeddings", png=png)
    save_command(out_dir)
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none skipped"
    if "histogram" in summary:
        click.echo((Path(out_dir) / HISTOGRAM_MD).read_text(encoding="utf-8"))
    click.echo(f"kept {summary['kept']} of {summary['candidates']} candidate(s) ({skipped}) -> "
               f"{Path(out_dir) / CUTS}")


COMMANDS = [select]
