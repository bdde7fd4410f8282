"""Test helpers shared by the test suites of ``ilt`` and its plugins."""

from ilt.testing.dummies import (
    converted_tiny_en,
    espeak_available,
    espeak_cuts,
    make_cuts,
    tiny_whisper_dir,
    whisper_tokenizer,
)

__all__ = ["converted_tiny_en", "espeak_available", "espeak_cuts", "make_cuts", "tiny_whisper_dir",
           "whisper_tokenizer"]
