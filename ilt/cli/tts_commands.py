"""``ilt augment tts``: speak rare-token sentences in the voices of real prompts
(over :func:`ilt.knowledge.tts.synthesize`). The ``augment`` group lives in
:mod:`ilt.cli.knowledge_commands`, which adds this command to it."""

from __future__ import annotations

from pathlib import Path

import click

from ilt.cli.options import parse_component, save_command


@click.command("tts")
@click.option("--augmenter", required=True,
              help="A registered augmenter (espeak, f5tts, sparktts; see `ilt plugins`), or YAML with options: "
                   "'{name: f5tts, ckpt_file: ..., vocab_file: ..., vocoder_dir: ...}'.")
@click.option("--prompts", "prompts_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Prompt cuts: real recordings with their transcript and language (cuts without a transcript "
                   "are skipped and counted).")
@click.option("--texts", "texts_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The sentences to speak: LANG<TAB>sentence lines (selected.txt of `ilt augment select-text`) "
                   "or bare lines in --language; an empty file is an error.")
@click.option("--language", help="The language of lines without LANG<TAB> (ISO 639-1).")
@click.option("--languages", help="Speak only the sentences in these languages: comma-separated ISO 639-1 codes "
                                 "(the paper synthesises English only) [default: all].")
@click.option("--per-sentence", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many prompt voices speak each sentence.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Targets per augmenter call; each finished chunk is kept, so a rerun resumes after it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the order in which prompts are used.")
@click.option("--id-prefix", "prefix", help="Prefix of the new cut IDs (default: the augmenter's name).")
@click.option("--force", is_flag=True, help="Start again, even if --out holds a finished or other run.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Writes audio/, cuts.jsonl.gz and summary.json (parts/ and plan.json for resuming).")
def tts(augmenter, prompts_path, texts_path, language, languages, per_sentence, chunk_size, seed, prefix, force,
        out_dir):
    """Synthesise speech for each sentence in the voice of a prompt cut of its language."""
    from ilt.knowledge.tts import CUTS, synthesize

    spec = parse_component(augmenter, "--augmenter")
    summary = synthesize(spec, prompts_path, texts_path, out_dir, language=language, per_sentence=per_sentence,
                         chunk_size=chunk_size, seed=seed, prefix=prefix, force=force,
                         languages=[c.strip() for c in languages.split(",") if c.strip()] if languages else None)
    save_command(out_dir)
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none skipped"
    click.echo(f"synthesised {summary['produced']} of {summary['targets']} utterance(s) "
               f"({summary['hours'] * 60:.1f} min) for {summary['sentences']} sentence(s) with "
               f"{summary['augmenter']} ({skipped}) -> {Path(out_dir) / CUTS}")


#: Added to the ``augment`` group by :mod:`ilt.cli.knowledge_commands`, not to ``ilt`` itself.
COMMANDS: list[click.Command] = []
