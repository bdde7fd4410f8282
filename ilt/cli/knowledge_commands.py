"""``ilt augment``: build the data of the Feedback and Fix knowledge tasks (the ILT paper, section 3.2).

This module owns the ``augment`` click group and its text sub-commands
(``token-stats``, ``select-text``, ``hard-cases``, over
:mod:`ilt.knowledge.text_tasks`). Sub-commands defined in other command modules
join the group in one of two ways:

* listed in :data:`EXTERNAL_COMMANDS` as ``"module:attribute"`` (how
  ``ilt augment tts`` of :mod:`ilt.cli.tts_commands` joins): this module adds
  them with ``augment.add_command`` when it is imported, so the other module
  imports nothing from here and leaves the command out of its ``COMMANDS``;
* or the other module calls ``augment.add_command(cmd)`` itself, at its
  module level (``from ilt.cli.knowledge_commands import augment``), and lists
  itself in :data:`ilt.cli.commands_registry.COMMAND_MODULES`, which imports every
  module before the CLI runs.

Either way, the group itself is added to ``ilt`` by this module's ``COMMANDS``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from ilt.cli.options import load_config, override_option, save_command


@click.group()
def augment() -> None:
    """Build knowledge-task data: token statistics, rare-token text, hard cases."""


@augment.command("token-stats")
@click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The training cuts whose supervision texts are counted.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
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
@click.option("--text", "text_paths", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Third-party sentences (repeatable): a UTF-8 file, one per line as LANG<TAB>sentence or a bare "
                   "sentence in --language; or a cut manifest (.jsonl.gz) whose supervision texts are read.")
@click.option("--language", help="The language of lines without LANG<TAB> (ISO 639-1).")
@click.option("--min-ratio", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.5, show_default=True,
              help="Keep sentences in which low-frequency tokens are more than this share of the tokens.")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
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
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
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
@click.option("--conf", "conf_path", type=click.Path(exists=True, dir_okay=False),
              help="Decoding YAML (default: built-in defaults, see conf/decode.yaml).")
@override_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Writes candidates.jsonl.gz, decode/ (reused on a rerun), cuts.jsonl.gz (the hard cases) "
                   "and summary.json.")
def hard_cases_cmd(model_dir, cuts_path, stats_path, max_error_rate, max_candidates, conf_path, overrides, out_dir):
    """Decode the cuts holding high-frequency tokens; keep those decoded badly."""
    from ilt.config import DecodeConfig
    from ilt.knowledge.text_tasks import HARD_CUTS, hard_cases

    summary = hard_cases(model_dir, cuts_path, stats_path, out_dir, max_error_rate=max_error_rate,
                         decode_config=load_config(conf_path, DecodeConfig, overrides),
                         max_candidates=max_candidates)
    save_command(out_dir)
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none skipped"
    sampled = f", {summary['decoded']} decoded" if summary["sampled"] < summary["candidates"] else ""
    click.echo(f"{summary['candidates']} of {summary['cuts']} cut(s) hold high-frequency tokens{sampled}; "
               f"{summary['kept']} have an error rate above {max_error_rate} ({skipped}) -> "
               f"{Path(out_dir) / HARD_CUTS}")


#: Sub-commands of ``ilt augment`` that live in other command modules, as ``module:attribute``.
EXTERNAL_COMMANDS: tuple[str, ...] = ("ilt.cli.tts_commands:tts",)


def add_external_commands(specs: tuple[str, ...]) -> None:
    for spec in specs:
        module, _, attribute = spec.partition(":")
        augment.add_command(getattr(importlib.import_module(module), attribute))


add_external_commands(EXTERNAL_COMMANDS)

COMMANDS = [augment]
