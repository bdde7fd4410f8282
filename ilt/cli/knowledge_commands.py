"""``ilt augment``: build the data of the Feedback and Fix knowledge tasks (the ILT paper, section 3.2).

The ``augment`` group and its sub-commands: ``token-stats``, ``select-text``
and ``hard-cases`` (over :mod:`ilt.knowledge.text_tasks`) and ``tts`` (over
:func:`ilt.knowledge.tts.synthesize`). The group joins ``ilt`` through this
module's ``COMMANDS``, as every command does.
"""

from __future__ import annotations

from pathlib import Path

import click

from ilt.cli.options import (
    MODEL,
    decode_config_option,
    is_main_process,
    list_option,
    load_config,
    override_option,
    overwrite_option,
    parse_component,
    save_command,
)


@click.group()
def augment() -> None:
    """Build knowledge-task data: token statistics, rare-token text, hard cases, speech."""


@augment.command("token-stats")
@click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The training cuts whose supervision texts are counted.")
@click.option("--model", "model_dir", required=True, type=MODEL,
              help="The model whose tokenizer counts (only the tokenizer is read when the backbone allows).")
@click.option("--backbone", default="whisper", show_default=True, help="A registered backbone (ilt plugins).")
@click.option("--low", type=click.IntRange(min=0), default=20, show_default=True,
              help="Tokens counted fewer times than this are low-frequency.")
@click.option("--high", type=click.IntRange(min=0), default=200, show_default=True,
              help="Tokens counted more times than this are high-frequency.")
@click.option("--top", type=click.IntRange(min=1), default=30, show_default=True,
              help="Tokens listed per language and end of the ranking in report.md.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Writes stats.json (counts per language, low and high sets) and report.md.")
def token_stats_cmd(cuts_path, model_dir, backbone, low, high, top, out_dir):
    """Count the tokenizer's tokens over the training text, per language."""
    from ilt.knowledge.text_tasks import REPORT_MD, STATS_JSON, token_stats

    stats = token_stats(cuts_path, model_dir, out_dir, backbone=backbone, low=low, high=high, top=top)
    save_command(out_dir)
    for language in sorted(stats.counts):
        click.echo(f"{language}: {stats.utterances[language]} utterance(s), "
                   f"{sum(stats.counts[language].values())} token(s), {len(stats.counts[language])} distinct, "
                   f"{len(stats.low_tokens(language))} low (< {low}), {len(stats.high_tokens(language))} high "
                   f"(> {high})")
    click.echo(f"-> {Path(out_dir) / STATS_JSON}, {Path(out_dir) / REPORT_MD}")


@augment.command("select-text")
@click.option("--stats", "stats_path", required=True, type=click.Path(exists=True),
              help="stats.json of `ilt augment token-stats` (or its directory).")
@list_option("--text", "text_paths", required=True, type=click.Path(exists=True, dir_okay=False),
             help="Third-party sentences (repeatable or comma-separated): a UTF-8 file, one per line as "
                  "LANG<TAB>sentence or a bare sentence in --language; or a cut manifest (.jsonl.gz) whose "
                  "supervision texts are read.")
@click.option("--language", help="The language of lines without LANG<TAB> (ISO 639-1).")
@click.option("--min-ratio", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.5, show_default=True,
              help="Keep sentences in which low-frequency tokens are more than this share of the tokens.")
@click.option("--model", "model_dir", type=MODEL,
              help="The tokenizer's model (default: the one the statistics were counted with).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Writes selected.txt (LANG<TAB>sentence), selected.jsonl (details) and summary.json.")
def select_text_cmd(stats_path, text_paths, language, min_ratio, model_dir, out_dir):
    """Keep the third-party sentences made mostly of low-frequency tokens.

    When none passes, the empty outputs are written and a warning says so
    (exit status 0); an empty input file is an error.
    """
    from ilt.knowledge.text_tasks import SELECTED_TXT, select_text

    summary = select_text(stats_path, text_paths, out_dir, language=language, min_ratio=min_ratio,
                          model_dir=model_dir)
    save_command(out_dir)
    rejected = ", ".join(f"{n} {reason}" for reason, n in summary["rejected"].items()) or "none rejected"
    click.echo(f"selected {summary['kept']} of {summary['sentences']} sentence(s) ({rejected}) -> "
               f"{Path(out_dir) / SELECTED_TXT}")


@augment.command("hard-cases")
@click.option("--model", "model_dir", required=True, type=MODEL,
              help="The model that transcribes the candidates (the paper: the pretrained model).")
@click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The cuts to mine (with reference text), usually the training cuts.")
@click.option("--stats", "stats_path", required=True, type=click.Path(exists=True),
              help="stats.json of `ilt augment token-stats` (or its directory): its high-frequency tokens.")
@click.option("--max-error-rate", type=click.FloatRange(min=0.0), default=0.05, show_default=True,
              help="Keep cuts whose utterance WER (CER for ja/ko/th) is above this.")
@click.option("--max-candidates", type=click.IntRange(min=1), default=None,
              help="Decode at most this many of the cuts with high-frequency tokens (a sample spread by cut ID "
                   "hash; decoding is the cost) [default: all].")
@decode_config_option()
@override_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Writes candidates.jsonl.gz, decode/ (reused on a rerun), cuts.jsonl.gz (the hard cases) "
                   "and summary.json.")
def hard_cases_cmd(model_dir, cuts_path, stats_path, max_error_rate, max_candidates, decode_config, overrides, out_dir):
    """Decode the cuts holding high-frequency tokens; keep those decoded badly."""
    from ilt.config import DecodeConfig
    from ilt.knowledge.text_tasks import HARD_CUTS, hard_cases

    summary = hard_cases(model_dir, cuts_path, stats_path, out_dir, max_error_rate=max_error_rate,
                         decode_config=load_config(decode_config, DecodeConfig, overrides),
                         max_candidates=max_candidates)
    save_command(out_dir)
    if not is_main_process():  # under accelerate launch every process returns the summary: say it once
        return
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none skipped"
    sampled = f", {summary['decoded']} decoded" if summary["sampled"] < summary["candidates"] else ""
    click.echo(f"{summary['candidates']} of {summary['cuts']} cut(s) hold high-frequency tokens{sampled}; "
               f"{summary['kept']} have an error rate above {max_error_rate} ({skipped}) -> "
               f"{Path(out_dir) / HARD_CUTS}")


@augment.command("tts")
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
@list_option("--languages", metavar="LANG",
             help="Speak only the sentences in these languages, ISO 639-1 codes (repeatable or comma-separated; "
                  "the paper synthesises English only) [default: all].")
@click.option("--per-sentence", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many prompt voices speak each sentence.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Targets per augmenter call; each finished chunk is kept, so a rerun resumes after it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the order in which prompts are used.")
@click.option("--id-prefix", "prefix", help="Prefix of the new cut IDs (default: the augmenter's name).")
@overwrite_option("Start again, even if --out holds a finished or other run.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Writes audio/, cuts.jsonl.gz and summary.json (parts/ and plan.json for resuming).")
def tts_cmd(augmenter, prompts_path, texts_path, language, languages, per_sentence, chunk_size, seed, prefix,
            overwrite, out_dir):
    """Synthesise speech for each sentence in the voice of a prompt cut of its language."""
    from ilt.knowledge.tts import CUTS, synthesize

    spec = parse_component(augmenter, "--augmenter")
    summary = synthesize(spec, prompts_path, texts_path, out_dir, language=language, per_sentence=per_sentence,
                         chunk_size=chunk_size, seed=seed, prefix=prefix, force=overwrite,
                         languages=list(languages) or None)
    save_command(out_dir)
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none skipped"
    click.echo(f"synthesised {summary['produced']} of {summary['targets']} utterance(s) "
               f"({summary['hours'] * 60:.1f} min) for {summary['sentences']} sentence(s) with "
               f"{summary['augmenter']} ({skipped}) -> {Path(out_dir) / CUTS}")


COMMANDS: list[click.Command] = [augment]
