"""Recognition: ``ilt decode``, ``ilt evaluate`` (decode, write the submission,
score), ``ilt score`` and ``ilt pseudo-label`` (decode with several models and
vote)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ilt.cli.options import (
    MODEL,
    decode_config_option,
    decode_options,
    is_main_process,
    list_option,
    load_config,
    override_option,
    parse_component,
    run_decode,
    save_command,
)

log = logging.getLogger("ilt")


@click.command("score")
@click.option("--ref", "ref_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Reference CutSet (jsonl.gz) with text and language on its supervisions.")
@click.option("--hyp", "hyp_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Hypotheses: JSONL from `ilt decode` ({id, text}) or a .trn file.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for scores.md, scores.json and the .trn files.")
@click.option("--group-by", type=click.Choice(["language", "accent"]), default="language",
              show_default=True, help="Rows of the table.")
@click.option("--sessions", is_flag=True,
              help="Track 2: --ref is a session manifest (or SegLST with language), --hyp SegLST JSON or STM "
                   "(ilt transcribe-sessions); tcpWER, cpWER (meeteval) and DER per language (docs/track2.md).")
@click.option("--collar", type=float, default=5.0, show_default=True, help="tcpWER collar (s), with --sessions.")
def score(ref_path: str, hyp_path: str, out_dir: str, group_by: str, sessions: bool, collar: float) -> None:
    """Score hypotheses per language: WER, or CER for Japanese, Korean and Thai."""
    from ilt.asr.score import score_files

    if sessions:
        from ilt.track2.transcribe import score_sessions

        score_sessions(ref_path, hyp_path, out_dir, collar=collar)
        click.echo((Path(out_dir) / "scores.md").read_text(encoding="utf-8"))
        return
    result = score_files(Path(ref_path), Path(hyp_path), Path(out_dir), group_by=group_by)
    click.echo(result.to_markdown())


@click.command("decode")
@decode_options
def decode(**options):
    """Decode cuts in their own language: per-language beam, >30 s audio in chunks."""
    records = run_decode(**options)
    save_command(options["out_dir"])
    if is_main_process():  # every process holds the gathered records: say it once
        click.echo(f"decoded {len(records)} cut(s) -> {options['out_dir']}")


@click.command("evaluate")
@decode_options
@click.option("--group-by", type=click.Choice(["language", "accent"]), default="language",
              show_default=True, help="Rows of the score table.")
def evaluate(group_by, **options):
    """Decode cuts (as `ilt decode`), write the submission file OUT/text, and score
    (as `ilt score`) when the cuts have reference text; a set without any (an
    evaluation set) is decoded but not scored."""
    from ilt.asr.decode import write_submission
    from ilt.asr.score import has_references, score_files

    records = run_decode(**options)
    if not is_main_process():  # under accelerate launch, the main process writes
        return
    out, cuts_path = Path(options["out_dir"]), options["cuts_path"]
    write_submission(records, out / "text")
    save_command(out)
    if has_references(cuts_path):
        result = score_files(Path(cuts_path), out / "hyps.jsonl", out, group_by=group_by)
        click.echo(result.to_markdown())
        return
    for stale in ("scores.json", "scores.md"):  # from an earlier run on other cuts: never report them
        (out / stale).unlink(missing_ok=True)
    log.info("evaluate: %s has no reference text: %d cut(s) decoded, not scored; submission: %s",
             cuts_path, len(records), out / "text")
    click.echo(f"decoded {len(records)} cut(s) -> {out / 'text'} (no reference text: not scored)")


@click.command("pseudo-label")
@list_option("--models", "model_paths", required=True, type=MODEL,
             help="The voting models (repeatable or comma-separated; one alone labels by its own hypotheses): "
                  "full model directories or hub IDs, or adapters (best/, checkpoints/step-N) on --base.")
@click.option("--base", type=MODEL,
              help="The model the adapters in --models were trained on (a directory or a hub ID).")
@click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The unlabelled cuts (their language is used; their text, if any, is not).")
@click.option("--voter", default="rover", show_default=True,
              help="A registered voter (ilt plugins), or YAML with options: '{name: rover, alpha: 0.5}'.")
@click.option("--min-agreement", type=float, default=0.0, show_default=True,
              help="Leave out cuts whose agreement is below this (0-1).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="hyps/<model>/ (cached per model), cuts.jsonl.gz, summary.json.")
@decode_config_option()
@override_option
def pseudo_label_cmd(model_paths, base, cuts_path, voter, min_agreement, out_dir, decode_config, overrides):
    """Pseudo-labels: decode with N models, vote per cut, keep the agreed labels."""
    from ilt.asr.pseudo import pseudo_label, voting_models
    from ilt.config import DecodeConfig

    spec = parse_component(voter, "--voter")
    summary = pseudo_label(voting_models(model_paths, base), cuts_path, out_dir, voter=spec,
                           min_agreement=min_agreement,
                           decode_config=load_config(decode_config, DecodeConfig, overrides))
    save_command(out_dir)
    if not is_main_process():  # under accelerate launch every process returns the summary: say it once
        return
    left = ", ".join(f"{n} {reason}" for reason, n in summary["left_out"].items()) or "none left out"
    click.echo(f"pseudo-labelled {summary['kept']} of {summary['cuts']} cut(s) ({left}) -> "
               f"{Path(out_dir) / 'cuts.jsonl.gz'}")


COMMANDS: list[click.Command] = [decode, evaluate, score, pseudo_label_cmd]
