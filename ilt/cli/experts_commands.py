"""``ilt experts``: LoRA language experts (one LoRA per language on one base
model), over :mod:`ilt.experts.train`. Decoding with them is ``ilt decode --experts``."""

from __future__ import annotations

import click

from ilt.cli.options import (
    MODEL,
    command_line,
    decode_config_option,
    list_option,
    load_config,
    override_option,
    overwrite_option,
    parse_sources,
    save_command,
)


@click.group("experts")
def experts() -> None:
    """LoRA language experts: train one LoRA per language on one base model (docs/experts.md)."""


@experts.command("train")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Experts YAML: a round (conf/focus.yaml's keys) plus an experts: section (conf/experts.yaml).")
@click.option("--model", "model_dir", required=True, type=MODEL,
              help="The base model every expert is trained on: a directory, or a hub ID ORG/NAME[@REVISION].")
@list_option("--train", "train_cuts", metavar="CUTS[:WEIGHT]",
             help="Training manifests replacing the config's task.data (repeatable or comma-separated); each "
                  "expert sees the cuts of its own language only.")
@click.option("--dev", "dev_cuts", type=click.Path(exists=True, dir_okay=False),
              help="Dev manifest; each expert is scored on the dev cuts of its own language.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="OUT/<lang>/ per expert (a round's outputs, best/ included) and OUT/experts.json.")
@decode_config_option("Decoding YAML for dev evaluation (default: greedy).")
@click.option("--force-precision", is_flag=True, help="Keep bf16/fp16 even on a CPU.")
@override_option
def train(config_path, model_dir, train_cuts, dev_cuts, out_dir, decode_config, force_precision, overrides):
    """Train one LoRA expert per language (resumes by itself, language by language)."""
    from ilt.config import DecodeConfig, ExpertsConfig
    from ilt.experts.train import train_experts

    cfg = load_config(config_path, ExpertsConfig, overrides)
    decode_cfg = load_config(decode_config, DecodeConfig, ()) if decode_config else None
    result = train_experts(cfg, model_dir, out_dir, train_cuts=parse_sources(train_cuts), dev_cuts=dev_cuts,
                           decode_config=decode_cfg, command=command_line(), force_precision=force_precision,
                           where=config_path)
    click.echo(result.summary())


@experts.command("fuse")
@click.option("--experts", "experts_dir", required=True, type=click.Path(file_okay=False),
              help="An experts directory (`ilt experts train --out`).")
@click.option("--method", default="cat", show_default=True, metavar="METHOD",
              help="cat, svd, linear, ties, dare_ties (PEFT's add_weighted_adapter) or full (the exact weighted "
                   "sum on the weights; always a full model). cat, full-rank svd and full are exact "
                   "(docs/experts.md).")
@list_option("--weights", "weights_spec", metavar="LANG=W",
             help="One weight per expert, e.g. en=0.5,de=0.5 (repeatable or comma-separated; 0 leaves one out; "
                  "default: equal, 1/n each).")
@click.option("--density", type=float, help="ties, dare_ties: the fraction of entries kept (default 0.5).")
@click.option("--svd-rank", type=int, help="svd: the rank of the result (default: the rank that keeps it exact).")
@click.option("--seed", type=int, default=0, show_default=True, help="dare_ties: seed of the random drop.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="The fused adapter (an adapter directory plus fusion.json), or with --merged a full model.")
@click.option("--merged", is_flag=True, help="Write a full model (the fused LoRA merged into the base, with "
                                             "lineage.json and a model card) instead of an adapter.")
@overwrite_option()
def fuse(experts_dir, method, weights_spec, density, svd_rank, seed, out_dir, merged, overwrite):
    """Fuse the experts into one adapter or one full model, for language-agnostic decoding."""
    from ilt.experts.fusion import fuse_experts, parse_weight_spec
    from ilt.experts.train import load_experts

    weights = parse_weight_spec(",".join(weights_spec))
    base, adapters = load_experts(experts_dir)
    out = fuse_experts(base, adapters, out_dir, method=method, weights=weights, density=density,
                       svd_rank=svd_rank, merged=merged, seed=seed, overwrite=overwrite)
    save_command(out)
    kind = "model" if merged or method == "full" else "adapter"
    click.echo(f"fused {len(adapters)} expert(s) ({', '.join(sorted(adapters))}) with {method} -> {kind} {out}")


@experts.command("distill")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Round YAML whose task.loss is distill (conf/distill.yaml).")
@click.option("--experts", "experts_dir", required=True, type=click.Path(file_okay=False),
              help="An experts directory (`ilt experts train --out`): the teachers, and the student's base.")
@list_option("--train", "train_cuts", metavar="CUTS[:WEIGHT]",
             help="Training manifests replacing the config's task.data (repeatable or comma-separated), every "
                  "language.")
@click.option("--dev", "dev_cuts", type=click.Path(exists=True, dir_okay=False),
              help="Dev manifest decoded and scored at each evaluation to pick the best adapter.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="The student's round directory: checkpoints, best/, final/, round.yaml, command.txt.")
@decode_config_option("Decoding YAML for dev evaluation (default: greedy).")
@click.option("--force-precision", is_flag=True, help="Keep bf16/fp16 even on a CPU.")
@override_option
def distill(config_path, experts_dir, train_cuts, dev_cuts, out_dir, decode_config, force_precision, overrides):
    """Distil the experts into one student LoRA on their base model (resumes by itself)."""
    from ilt.config import DecodeConfig, RoundConfig
    from ilt.experts.distill import with_experts
    from ilt.experts.train import load_experts
    from ilt.training.loop import train_round

    cfg = load_config(config_path, RoundConfig, overrides)
    base, adapters = load_experts(experts_dir)
    cfg = with_experts(cfg, base, adapters, where=config_path)
    decode_cfg = load_config(decode_config, DecodeConfig, ()) if decode_config else None
    result = train_round(cfg, base, out_dir, train_cuts=parse_sources(train_cuts), dev_cuts=dev_cuts,
                         decode_config=decode_cfg, command=command_line(), force_precision=force_precision)
    click.echo(result.summary())


COMMANDS = [experts]
