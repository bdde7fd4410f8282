"""``ilt train`` (one round's LoRA), ``ilt merge`` (a LoRA into its base, with
the history merge of Eq. 3) and ``ilt round`` (both in one command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ilt.cli.options import (
    MODEL,
    command_line,
    decode_config_option,
    is_main_process,
    list_option,
    load_config,
    override_option,
    overwrite_option,
    parse_sources,
    parse_weights,
    save_command,
)


def train_options(fn):
    """The options of `ilt train`, shared by `ilt round`."""
    options = [
        click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
                     help="Round YAML (conf/focus.yaml, conf/feedback.yaml, conf/fix.yaml)."),
        click.option("--model", "model_dir", required=True, type=MODEL,
                     help="The current full model M_{t-1}: a directory, or a hub ID ORG/NAME[@REVISION]."),
        list_option("--train", "train_cuts", metavar="CUTS[:WEIGHT]",
                    help="Training manifests replacing the config's task.data (repeatable or comma-separated)."),
        click.option("--dev", "dev_cuts", type=click.Path(exists=True, dir_okay=False),
                     help="Dev manifest decoded and scored at each evaluation to pick the best adapter."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                     help="The round's directory: checkpoints, best/, final/, round.yaml, command.txt."),
        decode_config_option("Decoding YAML for dev evaluation (default: greedy)."),
        click.option("--force-precision", is_flag=True, help="Keep bf16/fp16 even on a CPU."),
        override_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def history_options(fn):
    """``--history`` and ``--weights`` of the history merge (Eq. 3), shared by `ilt merge` and `ilt round`."""
    fn = list_option("--weights", metavar="W0,W1,...",
                     help="The newly merged model's weight first, then one per --history; they sum to 1 "
                          "(repeatable or comma-separated).")(fn)
    return list_option("--history", type=MODEL,
                       help="Models before the base, M_{t-2}, M_{t-3}, ... (repeatable or comma-separated) for the "
                            "history merge (Eq. 3): M_t = w0 (M_{t-1} + LoRA) + w1 M_{t-2} + ...")(fn)


def run_training(config_path, model_dir, train_cuts, dev_cuts, out_dir, decode_config, force_precision,
                 overrides) -> Any:
    """Train one round (`ilt train`) and print its summary."""
    from ilt.config import DecodeConfig, RoundConfig
    from ilt.training.loop import train_round

    sources = parse_sources(train_cuts)  # a typo fails before the config loads
    cfg = load_config(config_path, RoundConfig, overrides)
    decode_cfg = load_config(decode_config, DecodeConfig, ()) if decode_config else None
    result = train_round(cfg, model_dir, out_dir, train_cuts=sources, dev_cuts=dev_cuts,
                         decode_config=decode_cfg, command=command_line(), force_precision=force_precision)
    click.echo(result.summary())
    return result


def history_weights(history: tuple[str, ...], weights: tuple[str, ...]) -> list[float] | None:
    """``--weights`` as numbers, checked against ``--history`` (a usage error, exit 2, when they disagree)."""
    from ilt.training.lora import check_weights

    phi = parse_weights(weights)
    try:
        check_weights(len(history), phi)
    except ValueError as exc:
        raise click.UsageError(f"--history/--weights: {exc}") from None
    return phi


def run_merge(model_dir, adapter_dir, out_dir, history, weights, overwrite, precision="stored") -> Path:
    """Merge ``adapter_dir`` into ``model_dir`` (and the history models) into ``out_dir``."""
    from ilt.training.lora import merge_adapter

    phi = history_weights(history, weights)
    out = merge_adapter(model_dir, adapter_dir, out_dir, history=list(history) or None, weights=phi,
                        overwrite=overwrite, precision=precision)
    save_command(out)
    click.echo(f"merged {adapter_dir} into {model_dir} -> {out}")
    return out


@click.command("train")
@train_options
def train(**options):
    """Train one ILT round's LoRA and keep the best dev adapter (resumes by itself)."""
    run_training(**options)


@click.command("merge")
@click.option("--model", "model_dir", required=True, type=MODEL,
              help="The base full model M_{t-1}: a directory, or a hub ID ORG/NAME[@REVISION].")
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The adapter to merge: a round's best/ or final/, or a checkpoint checkpoints/step-N.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="The merged full model: weights, lineage.json, model card, command.txt.")
@history_options
@click.option("--precision", type=click.Choice(["stored", "fp32"]), default="stored", show_default=True,
              help="stored: merge layer by layer in fp32, save in the base's dtype; fp32: load, merge and save fp32.")
@overwrite_option()
def merge(model_dir, adapter_dir, out_dir, history, weights, precision, overwrite):
    """Merge a LoRA into its base and write a full model plus lineage.json."""
    run_merge(model_dir, adapter_dir, out_dir, history, weights, overwrite, precision)


@click.command("round")
@train_options
@click.option("--merged-out", required=True, type=click.Path(file_okay=False),
              help="The next full model M_t: --model with the best adapter merged (replaced if it exists).")
@history_options
def round_cmd(merged_out, history, weights, **options):
    """One ILT round: `ilt train`, then `ilt merge` of its best adapter into --merged-out."""
    history_weights(history, weights)  # a typo fails before training, not after
    result = run_training(**options)
    if is_main_process():  # under accelerate launch, the main process merges
        run_merge(options["model_dir"], result.best_dir, merged_out, history, weights, overwrite=True)


COMMANDS: list[click.Command] = [train, merge, round_cmd]
