"""Learnable language-ID embeddings at the encoder and decoder outputs (the paper's section 3.2.3).

"To reduce transcription errors caused by language confusion, learnable
language identifier embeddings are introduced at both the encoder and decoder
output layers." Here that is one learnable vector per language at each end:

* **encoder side**: added to the encoder output (Whisper's encoder, Qwen2-Audio's
  audio tower, before its projector), at every frame;
* **decoder side**: added to the decoder's last hidden state, at every
  position, just before the LM head.

Both tables start at zero, so switching them on leaves the model's output
unchanged until training moves them. They are switched on per round in the
round YAML (``train.lid_embeddings: true``) and trained fully (not as a LoRA)
with the same optimiser; a language the table does not hold (or a cut without
a language) gets no vector.

How they are wired
    :class:`LidEmbeddings` is registered as the submodule ``ilt_lid`` of the
    ``transformers`` model (so the optimiser, ``.to()`` and Accelerate see its
    parameters) and adds its vectors through two PyTorch hooks: a forward hook
    on the backbone's encoder (its ``last_hidden_state``) and a forward
    pre-hook on the LM head (its input). The rows to add are set around each
    forward pass with :func:`applied` (the backbones do it in ``loss``,
    ``score`` and ``generate``); outside it the hooks add nothing. Beam search
    runs ``utterances x beams`` rows; each utterance's vector is repeated for
    its beams (``generate``'s layout, ``repeat_interleave``).

Where the language comes from
    Training and scoring: the cut's (first supervision's) language. Decoding:
    the language ``ilt decode`` groups the cut under; when that is unknown,
    the model's own language detection picks it first, without the
    embeddings (they need the language they would help detect):
    Whisper's language token (``WhisperForConditionalGeneration.detect_language``,
    one decoder step), Qwen2-Audio's language tag (it writes ``<|en|>`` after
    the prompt "Detect the language and recognize the speech:" when none is
    given). The hypothesis is then decoded with that language's vectors (and,
    for both backbones, that language in the prompt).

On disk: :data:`LID_FILE`
    ``lid_embeddings.safetensors`` holds ``encoder`` (languages x encoder
    width) and ``decoder`` (languages x decoder width) in fp32, and in its
    metadata (one entry, ``ilt_lid``, a JSON object) the format
    (``ilt-lid-1``), the language codes of the rows (``languages``) and the
    names of the two modules the vectors are added at (``encoder_module``,
    ``head_module``). It sits in an adapter directory when the round trained
    it (with the LoRA, in every checkpoint too, so a resumed run continues
    it) and in a merged model directory beside ``model.safetensors``.

Why the merged model needs the extra file (not folded exactly)
    Both vectors depend on the language, and a stock checkpoint has no
    language-dependent weights: the only way the language enters it is the
    prompt token, whose effect passes through attention and cannot carry a
    constant shift at every frame. The decoder side alone *could* be folded
    exactly as a logit bias, ``W (h + d_lang) = W h + W d_lang``, but stock
    classes have no per-language logit bias either, and ``W d_lang`` is a
    vocabulary-wide vector per language (156k floats for Qwen2-Audio) where
    ``d_lang`` is 4096. So the merged directory is the stock model (LoRA
    merged, loads with ``WhisperForConditionalGeneration`` /
    ``Qwen2AudioForConditionalGeneration`` as is) plus this small file; ilt's
    backbone loaders apply it (:func:`attach_saved`), and anyone else applies
    it with the two hooks of :func:`install` (see ``docs/lid.md``). Without
    the file the model is the model with all-zero embeddings: valid, only
    without the language vectors.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

from ilt.data.languages import WHISPER_LANGUAGES
from ilt.errors import IltInputError

log = logging.getLogger("ilt")

#: The file holding the embeddings, in an adapter or a merged model directory.
LID_FILE = "lid_embeddings.safetensors"
#: The submodule name of :class:`LidEmbeddings` in the ``transformers`` model.
MODULE_NAME = "ilt_lid"
#: The languages of a new table, in row order (every language ilt knows).
LANGUAGES: tuple[str, ...] = tuple(WHISPER_LANGUAGES)
_INDEX = {code: i for i, code in enumerate(LANGUAGES)}
_FORMAT = "ilt-lid-1"
_META_KEY = "ilt_lid"


def language_ids(languages: Sequence[str | None]) -> Any:
    """A ``LongTensor`` of the table rows of ``languages`` (-1: none)."""
    import torch

    return torch.tensor([_INDEX.get(lang or "", -1) for lang in languages], dtype=torch.long)


@functools.cache
def _module_class() -> type:
    import torch
    import torch.nn as nn

    class LidEmbeddings(nn.Module):
        """One learnable vector per language for the encoder output and one
        for the decoder's last hidden state; see :mod:`ilt.models.lid`."""

        def __init__(self, languages: Sequence[str], encoder_dim: int, decoder_dim: int) -> None:
            super().__init__()
            self.languages = list(languages)
            self.encoder = nn.Parameter(torch.zeros(len(self.languages), int(encoder_dim)))
            self.decoder = nn.Parameter(torch.zeros(len(self.languages), int(decoder_dim)))
            #: table rows of the utterances of the current forward pass (None: add nothing)
            self.current: Any = None
            self.module_names: tuple[str, str] = ("", "")
            self.handles: list[Any] = []

        def shift(self, table: Any, hidden: Any) -> Any:
            """``hidden`` (rows x ... x width) plus each row's language vector."""
            ids = self.current
            if ids is None:
                return hidden
            rows = hidden.shape[0]
            if rows != ids.shape[0]:
                if ids.shape[0] == 0 or rows % ids.shape[0]:
                    raise ValueError(f"language-ID embeddings: {rows} rows for {ids.shape[0]} utterances")
                ids = ids.repeat_interleave(rows // ids.shape[0])  # beams of one utterance are adjacent
            ids = ids.to(hidden.device)
            vectors = table[ids.clamp(min=0)] * (ids >= 0).unsqueeze(-1).to(table.dtype)
            return hidden + vectors.to(hidden.dtype).view(rows, *([1] * (hidden.dim() - 2)), -1)

        def extra_repr(self) -> str:
            return f"languages={len(self.languages)}, encoder={self.encoder.shape[1]}, decoder={self.decoder.shape[1]}"

    return LidEmbeddings


def _encoder_hook(lid: Any, module: Any, args: Any, output: Any) -> Any:
    if lid.current is None:
        return None
    if isinstance(output, tuple):
        return (lid.shift(lid.encoder, output[0]), *output[1:])
    output.last_hidden_state = lid.shift(lid.encoder, output.last_hidden_state)
    return output


def _head_pre_hook(lid: Any, module: Any, args: Any) -> Any:
    if lid.current is None:
        return None
    return (lid.shift(lid.decoder, args[0]), *args[1:])


def find(model: Any) -> Any:
    """The :class:`LidEmbeddings` inside ``model`` (any wrapper: PEFT, DDP), or ``None``."""
    if model is None or not hasattr(model, "modules"):
        return None
    cls = _module_class()
    return next((m for m in model.modules() if isinstance(m, cls)), None)


def _points(backbone: Any) -> tuple[Any, Any, str, str]:
    """``(encoder, lm_head, encoder name, head name)`` of ``backbone.model``."""
    if not hasattr(backbone, "lid_modules"):
        raise IltInputError(f"backbone {getattr(backbone, 'name', type(backbone).__name__)!r} has no language-ID "
                            f"embeddings (no lid_modules()); set train.lid_embeddings: false")
    encoder, head = backbone.lid_modules()
    names = {id(m): n for n, m in backbone.model.named_modules()}
    return encoder, head, names.get(id(encoder), ""), names.get(id(head), "")


def install(model: Any, lid: Any, encoder: Any, head: Any) -> Any:
    """Register ``lid`` as ``model.ilt_lid`` and hook it onto ``encoder`` (its
    output) and ``head`` (the LM head's input). This is all a merged model's
    :data:`LID_FILE` needs with stock ``transformers``."""
    for handle in lid.handles:
        handle.remove()
    lid.handles = [encoder.register_forward_hook(functools.partial(_encoder_hook, lid)),
                   head.register_forward_pre_hook(functools.partial(_head_pre_hook, lid))]
    model.add_module(MODULE_NAME, lid)
    return lid


def attach(backbone: Any) -> Any:
    """The embeddings of ``backbone.model``, created (all zero, fp32, on the
    encoder's device) and installed when it has none."""
    lid = find(backbone.model)
    if lid is not None:
        return lid
    encoder, head, encoder_name, head_name = _points(backbone)
    config = encoder.config
    encoder_dim = getattr(config, "d_model", None) or config.hidden_size
    lid = _module_class()(LANGUAGES, encoder_dim, head.in_features)
    lid.module_names = (encoder_name, head_name)
    device = next(encoder.parameters()).device
    return install(backbone.model, lid.to(device), encoder, head)


def train_embeddings(backbone: Any) -> Any:
    """Attach the embeddings (kept from the base model when it has them) and
    make them trainable: the round YAML's ``train.lid_embeddings``."""
    lid = attach(backbone)
    lid.float().requires_grad_(True)
    log.info("language-ID embeddings: %d trainable parameters (%d languages)",
             lid.encoder.numel() + lid.decoder.numel(), len(lid.languages))
    return lid


@contextlib.contextmanager
def applied(model: Any, languages: Any) -> Iterator[None]:
    """Within the block, the forward passes of ``model`` add the vectors of
    ``languages`` (one per utterance: codes, ``None`` for none, or a tensor of
    :func:`language_ids`); nothing happens when ``model`` has no embeddings
    or ``languages`` is ``None``."""
    import torch

    lid = find(model)
    if lid is None or languages is None:
        yield
        return
    ids = languages if torch.is_tensor(languages) else language_ids(list(languages))
    previous, lid.current = lid.current, ids
    try:
        yield
    finally:
        lid.current = previous


def decode_languages(backbone: Any, model: Any, inputs: dict[str, Any], language: str | None,
                     rows: int) -> list[str | None] | None:
    """The language of each of ``rows`` inputs to decode with, when ``model``
    has embeddings: ``language``, or when that is ``None`` the model's own
    detection (``backbone.detect_language``, run without the embeddings).
    ``None`` when the model has no embeddings (nothing to apply)."""
    if find(model) is None:
        return None
    if language is not None:  # one for every row, or one per row
        return [language] * rows if isinstance(language, str) else list(language)
    return list(backbone.detect_language(model, inputs))


# --------------------------------------------------------------------------- files


def save(lid: Any, directory: str | Path) -> Path:
    """Write ``lid`` as :data:`LID_FILE` in ``directory`` (fp32)."""
    from safetensors.torch import save_file

    path = Path(directory) / LID_FILE
    tensors = {"encoder": lid.encoder.detach().float().cpu().contiguous(),
               "decoder": lid.decoder.detach().float().cpu().contiguous()}
    # one metadata entry: safetensors writes several in no fixed order, and the file should be reproducible
    info = {"format": _FORMAT, "languages": lid.languages, "encoder_module": lid.module_names[0],
            "head_module": lid.module_names[1]}
    save_file(tensors, str(path), metadata={_META_KEY: json.dumps(info, sort_keys=True)})
    return path


def save_trained(model: Any, directory: str | Path) -> Path | None:
    """Write the embeddings of ``model`` beside its adapter when this round
    trains them (they are trainable); return the file, or ``None``."""
    lid = find(model)
    if lid is None or not lid.encoder.requires_grad:
        return None
    return save(lid, directory)


def read(path: str | Path) -> tuple[list[str], Any, Any]:
    """``(languages, encoder table, decoder table)`` of a :data:`LID_FILE`.

    :raises IltInputError: unreadable, or not ilt's format.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(_META_KEY, "{}"))
            languages = meta.get("languages")
            encoder, decoder = f.get_tensor("encoder"), f.get_tensor("decoder")
    except Exception as exc:  # safetensors raises its own error types
        raise IltInputError(f"{path}: unreadable language-ID embeddings: {exc}") from None
    if meta.get("format") != _FORMAT or not isinstance(languages, list) \
            or len(languages) != encoder.shape[0] or len(languages) != decoder.shape[0]:
        raise IltInputError(f"{path}: not ilt language-ID embeddings ({_FORMAT}, rows = languages)")
    return languages, encoder, decoder


def load_weights(model: Any, directory: str | Path) -> bool:
    """Copy :data:`LID_FILE` in ``directory`` (if there) into the embeddings
    of ``model``, row by language code; return whether a file was loaded.

    :raises IltInputError: a file whose widths do not fit, or a model without
        embeddings.
    """
    import torch

    path = Path(directory) / LID_FILE
    if not path.is_file():
        return False
    lid = find(model)
    if lid is None:
        raise IltInputError(f"{path}: language-ID embeddings for a model that has none")
    languages, encoder, decoder = read(path)
    if encoder.shape[1] != lid.encoder.shape[1] or decoder.shape[1] != lid.decoder.shape[1]:
        raise IltInputError(f"{path}: embedding widths {encoder.shape[1]}/{decoder.shape[1]} do not fit this "
                            f"model ({lid.encoder.shape[1]}/{lid.decoder.shape[1]})")
    rows = {code: i for i, code in enumerate(lid.languages)}
    unknown = [code for code in languages if code not in rows]
    if unknown:
        log.warning("%s: no row for language(s) %s; ignored", path, ", ".join(unknown))
    with torch.no_grad():
        for i, code in enumerate(languages):
            if code in rows:
                lid.encoder[rows[code]] = encoder[i].to(lid.encoder.dtype)
                lid.decoder[rows[code]] = decoder[i].to(lid.decoder.dtype)
    return True


def attach_saved(backbone: Any, directory: str | Path) -> Any:
    """Attach and load the embeddings saved in ``directory`` (a merged model
    or an adapter directory) when it has :data:`LID_FILE`; frozen. Returns
    them, or ``None`` when there is no file."""
    if not (Path(directory) / LID_FILE).is_file():
        return None
    lid = attach(backbone)
    load_weights(backbone.model, directory)
    lid.requires_grad_(False)
    return lid


@contextlib.contextmanager
def detached(model: Any) -> Iterator[Any]:
    """Within the block, ``model`` has no ``ilt_lid`` submodule (so that
    ``save_pretrained`` writes the stock checkpoint); yields the embeddings
    (or ``None``). The hooks stay, and add nothing outside :func:`applied`."""
    lid = model._modules.pop(MODULE_NAME, None) if hasattr(model, "_modules") else None
    try:
        yield lid
    finally:
        if lid is not None:
            model._modules[MODULE_NAME] = lid


def zero_filled(own: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """``theirs`` (a state dict) with all-zero embeddings where ``own`` has
    embeddings and ``theirs`` none: a model without them is exactly the model
    with zero vectors (for the history merge of models before LID was on)."""
    prefix = f"{MODULE_NAME}."
    missing = {k: v.new_zeros(v.shape) for k, v in own.items()
               if (k.startswith(prefix) or f".{prefix}" in k) and k not in theirs}
    return {**theirs, **missing} if missing else theirs


__all__ = ["LID_FILE", "LANGUAGES", "MODULE_NAME", "applied", "attach", "attach_saved", "decode_languages",
           "detached", "find", "install", "language_ids", "load_weights", "read", "save", "save_trained",
           "train_embeddings", "zero_filled"]
