"""A tiny random Qwen2-Audio for tests, built offline.

The tokenizer is a byte-level BPE trained here with ``tokenizers`` on a few
sentences, wrapped in ``transformers``' ``Qwen2Tokenizer`` (Qwen's own
pre-tokenizer), plus the special tokens Qwen2-Audio's prompt uses
(``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ``<|AUDIO|>``,
``<|audio_bos|>``, ``<|audio_eos|>``) and a language tag ``<|xx|>`` per
language code. The model follows transformers' own Qwen2-Audio tests (hidden
size 32, 2 layers in each tower); the feature extractor is a
``WhisperFeatureExtractor`` (as in Qwen2-Audio), its window shortened with the
audio tower's ``max_source_positions``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

#: Special tokens of Qwen2-Audio's prompts (language tags are added after these).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")

_CORPUS = (
    "Detect the language and recognize the speech: ",
    "hello world", "the quick brown fox jumps over the lazy dog",
    "bonjour le monde", "guten tag welt", "hola mundo", "ciao mondo",
)


def qwen2_tokenizer(*, vocab_size: int = 400, languages: Sequence[str] | None = None,
                    corpus: Sequence[str] = _CORPUS) -> Any:
    """A tiny Qwen2 byte-level BPE tokenizer with Qwen2-Audio's special tokens
    and a ``<|xx|>`` tag per language (default: every language ilt knows)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from ilt.data.languages import WHISPER_LANGUAGES

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.train_from_iterator(list(corpus) * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                               eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tags = [f"<|{code}|>" for code in (languages if languages is not None else WHISPER_LANGUAGES)]
    tokenizer.add_special_tokens({"additional_special_tokens": [*SPECIAL_TOKENS[1:], *tags]})
    return tokenizer


def tiny_qwen2_audio_dir(path: str | Path, *, hidden: int = 32, layers: int = 2, heads: int = 4,
                         max_source_positions: int = 100, num_mel_bins: int = 80, seed: int = 0,
                         languages: Sequence[str] | None = None) -> Path:
    """Save a tiny random Qwen2-Audio (model, processor, generation config)
    into ``path`` and return it.

    With the default ``max_source_positions=100`` the model takes 2 s of audio
    (200 feature frames, 50 audio tokens).
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    from ilt.core.files import atomic_dir

    tokenizer = qwen2_tokenizer(languages=languages)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2AudioConfig(
        audio_config=dict(d_model=hidden, encoder_layers=layers, encoder_attention_heads=heads,
                          encoder_ffn_dim=2 * hidden, num_mel_bins=num_mel_bins,
                          max_source_positions=max_source_positions),
        text_config=dict(model_type="qwen2", hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         intermediate_size=2 * hidden, vocab_size=len(tokenizer), max_position_embeddings=1024,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    samples = max_source_positions * 2 * 160
    feature_extractor = WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=max(1, samples // 16000))
    processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(path)


__all__ = ["SPECIAL_TOKENS", "qwen2_tokenizer", "tiny_qwen2_audio_dir"]
