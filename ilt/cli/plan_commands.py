"""``ilt plan``: the memory a round takes per device under DDP, FSDP and
ZeRO, and the largest micro-batch that fits (over :mod:`ilt.training.plan`;
estimates, see docs/scale.md)."""

from __future__ import annotations

import json

import click

from ilt.cli.options import list_option, option, override_option

STRATEGY_CHOICES = ("ddp", "fsdp", "zero2", "zero3")


@click.command("plan")
@option("--model", "model", required=True, metavar="DIR|CONFIG|HUB_ID",
        help="The backbone: a model directory, its config.json, or a hub ID whose config ships with ilt "
             "(openai/whisper-large-v3, openai/whisper-base, Qwen/Qwen2-Audio-7B-Instruct); nothing is downloaded.")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Round YAML (conf/focus.yaml): the LoRA, micro-batch, grad_accum, precision, checkpointing.")
@override_option
@click.option("--processes", "-n", type=click.IntRange(min=1), default=8, show_default=True,
              help="Processes (GPUs) in all, over every node.")
@list_option("--strategy", "strategies", metavar="NAME", default=("ddp", "fsdp", "zero2"), show_default=True,
             help="ddp, fsdp (full shard), zero2, zero3; one column each (repeatable or comma-separated).")
@click.option("--micro-batch", type=click.IntRange(min=1), help="Cuts per forward pass (default: the round's).")
@click.option("--seconds", type=click.FloatRange(min=0.1, max=30.0), default=30.0, show_default=True,
              help="Seconds of audio per cut.")
@click.option("--checkpointing/--no-checkpointing", default=None,
              help="Gradient checkpointing (default: the round's train.gradient_checkpointing).")
@click.option("--optimizer", type=click.Choice(["adamw", "adamw8bit"]),
              help="adamw: 8 bytes of fp32 state per trainable parameter; adamw8bit: 2 (default: the round's).")
@click.option("--device-memory", type=click.FloatRange(min=1.0), default=80.0, show_default=True,
              help="Memory of one device, in GiB.")
@click.option("--reserve", type=click.FloatRange(min=0.0, max=0.9), default=0.1, show_default=True,
              help="Fraction of the device kept free (CUDA context, allocator fragmentation).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (bytes) instead of the table.")
def plan(model: str, config_path: str, overrides: tuple[str, ...], processes: int, strategies: list[str],
         micro_batch: int | None, seconds: float, checkpointing: bool | None, optimizer: str | None,
         device_memory: float, reserve: float, as_json: bool) -> None:
    """Estimate parameters and memory per device for one round, before training.

    Counts the parameters exactly (the model built on the meta device, the
    LoRA attached with PEFT), then the bytes per device of weights, LoRA,
    gradients, optimiser state, buckets and activations, the peak, the
    largest micro-batch that fits --device-memory and what to switch on when
    the round's does not. The activation figures are estimates (docs/scale.md).
    """
    from ilt.config import RoundConfig, load_with_overrides
    from ilt.training.plan import format_table, setup_from_round, to_json
    from ilt.training.plan import plan as make_plan

    unknown = [s for s in strategies if s not in STRATEGY_CHOICES]
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r}: use {', '.join(STRATEGY_CHOICES)}", param_hint="'--strategy'")
    round_config = load_with_overrides(config_path, RoundConfig, overrides)
    setup = setup_from_round(round_config, processes=processes, micro_batch=micro_batch, seconds=seconds,
                             checkpointing=checkpointing, optimizer=optimizer, device_memory_gib=device_memory,
                             reserve=reserve)
    counted, plans, tips = make_plan(model, round_config, setup, list(dict.fromkeys(strategies)))
    if as_json:
        click.echo(json.dumps(to_json(counted, round_config, setup, plans, tips), indent=2))
    else:
        click.echo(format_table(counted, round_config, setup, plans, tips))


COMMANDS: list[click.Command] = [plan]
