"""``ilt export ct2`` (a model for faster-whisper / CTranslate2) and ``ilt card``
(rewrite a model directory's model card, for example after ``ilt report``)."""

from __future__ import annotations

from pathlib import Path

import click

from ilt.cli.options import MODEL, save_command

QUANTIZATION_CHOICES = ["int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                        "bfloat16", "float32"]


@click.group("export")
def export_group() -> None:
    """Export a full model for serving elsewhere."""


@export_group.command("ct2")
@click.argument("model", type=MODEL)
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--quantization", type=click.Choice(QUANTIZATION_CHOICES), default="float16", show_default=True,
              help="CTranslate2 weight type (faster-whisper converts again at load time: compute_type).")
@click.option("--license", "license_", help="The model card's license (default: the base model's, or 'other').")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
def export_ct2_cmd(model: str, out: str, quantization: str, license_: str | None, overwrite: bool) -> None:
    """Write a CTranslate2 model directory OUT from the Hugging Face Whisper MODEL
    (a merged ILT model, or a hub ID) that faster_whisper.WhisperModel and
    ctranslate2.models.Whisper load offline, with its model card."""
    from ilt.models.export import export_ct2

    result = export_ct2(model, out, quantization=quantization, overwrite=overwrite, license_=license_)
    save_command(result)
    click.echo(f"exported {model} -> {result} (CTranslate2, {quantization})")


@click.command("card")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("--report", "reports", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An `ilt report` JSON (report_<split>.json) to take this model's error rates from "
                   "(repeatable; default: the experiment's report/report_*.json).")
@click.option("--license", "license_", help="The card's license (default: the base model's, or 'other').")
def card_cmd(model: str, reports: tuple[str, ...], license_: str | None) -> None:
    """(Re)write MODEL/README.md, the Hugging Face model card of a model directory:
    lineage, data mix, and the latest per-language error table of `ilt report`.
    For an `ilt export` directory, the card is built from its source model's
    files next to it (lineage.json) and says it is a CTranslate2 export."""
    from ilt.core.files import read_json
    from ilt.models.export import EXPORT_JSON
    from ilt.models.modelcard import write_card

    model_dir = Path(model)
    export = read_json(model_dir / EXPORT_JSON)
    options = {"library": "ctranslate2", "export": export, "tags": ["ctranslate2", "faster-whisper"]} \
        if isinstance(export, dict) else {}
    path = write_card(model_dir, report_files=list(reports) or None, license_=license_, **options)
    click.echo(f"model card -> {path}")


COMMANDS = [export_group, card_cmd]
