"""Text normalisation and scoring tokens, following the MLC-SLM challenge.

The Interspeech 2025 MLC-SLM challenge scores Task I with ``meeteval-wer wer``
after two steps of its baseline recipe (github.com/mubingshen/MLC-SLM-Baseline,
``examples/mlcslm/asr/run.sh``, stage 8):

1. ``local/text_normalization.py``: lowercase; delete the ASCII punctuation
   except the apostrophe and the hyphen, plus ``。、？！・¿¡，``; squeeze runs
   of spaces.
2. ``local/add_space_between_chars_asr.py``, for Japanese, Korean and Thai
   only: every character of the CJK / kana / Hangul / Thai blocks becomes a
   token of its own, so meeteval's *word* error rate is a character error
   rate there. Runs of other characters (Latin words, digits) stay whole, and
   the spaces between Korean words do not count.

This module does the same, keyed on the supervision's ISO 639-1 language
instead of the utterance ID. Both the reference and the hypothesis go through
it; nothing else is mapped (no Unicode NFKC, curly quotes are kept), so the
numbers stay comparable with the challenge's.
"""

from __future__ import annotations

import re

from ilt.data.languages import CER_LANGUAGES, base_language

__all__ = [
    "PUNCTUATION",
    "normalize",
    "split_cer_chars",
    "tokens_for_scoring",
    "unit_of",
]

#: Characters deleted by :func:`normalize`: ASCII punctuation without ``'``
#: and ``-``, then the CJK and Spanish marks the challenge lists.
PUNCTUATION = "".join(c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" if c not in "'-") + "。、？！・¿¡，"

_PUNCT_RE = re.compile("[" + re.escape(PUNCTUATION) + "]")

# Code point blocks whose characters are scored one by one in CER languages.
# The same blocks as the challenge's recipe: Hangul Jamo; CJK radicals to Yi
# (kana, CJK symbols and ideographs, Hangul compatibility Jamo); Phags-pa to
# Hangul syllables; CJK compatibility ideographs and forms; half- and
# full-width forms; the supplementary ideographic plane; Thai.
_CER_BLOCKS = (
    ("\u1100", "\u11ff"),
    ("\u2e80", "\ua4cf"),
    ("\ua840", "\ud7af"),
    ("\uf900", "\ufaff"),
    ("\ufe30", "\ufe4f"),
    ("\uff01", "\uff60"),
    ("\uff65", "\uffdc"),
    ("\U00020000", "\U0002ffff"),
    ("\u0e00", "\u0e7f"),
)
_CER_CHAR_RE = re.compile("([" + "".join(f"{lo}-{hi}" for lo, hi in _CER_BLOCKS) + "])")


def unit_of(language: str) -> str:
    """``"char"`` for Japanese, Korean and Thai, ``"word"`` for any other language."""
    return "char" if base_language(language) in CER_LANGUAGES else "word"


def normalize(text: str | None, language: str) -> str:
    """The challenge's normalisation: lowercase, delete punctuation, squeeze spaces.

    Apostrophes and hyphens are kept (``don't``, ``vingt-deux``). ``language``
    is accepted for symmetry with :func:`tokens_for_scoring`; the rules are the
    same for every language. ``None`` gives ``""``.
    """
    if not text:
        return ""
    return " ".join(_PUNCT_RE.sub("", text.lower()).split())


def split_cer_chars(text: str) -> str:
    """Put a space around every CJK, kana, Hangul and Thai character.

    Other runs stay whole and whitespace is squeezed:
    ``"iphone を買った"`` -> ``"iphone を 買 っ た"``.
    """
    return " ".join(_CER_CHAR_RE.sub(r" \1 ", text).split())


def tokens_for_scoring(text: str | None, language: str) -> list[str]:
    """The units the scorer counts errors over, after its normalisation: what
    a voter should compare so that its choice agrees with the WER/CER.

    The text is normalised by :func:`normalize` (lowercase, punctuation of
    :data:`PUNCTUATION` deleted, apostrophes and hyphens kept, whitespace
    squeezed), then split into words, or, for the CER languages
    (:data:`ilt.data.languages.CER_LANGUAGES`: ``ja``, ``ko``, ``th``, regional
    variants included), into characters, where runs of Latin letters or digits
    stay one unit (:func:`split_cer_chars`).

    :param text: a transcript or hypothesis; ``None`` or ``""`` gives ``[]``.
    :param language: its ISO 639-1 code, which picks words or characters
        (``unit_of``); pass ``"en"`` (or any word language) for an unknown one.
    :returns: the units, in order.

    >>> tokens_for_scoring("Hello, World!", "en")
    ['hello', 'world']
    >>> tokens_for_scoring("Don't stop, vingt-deux.", "fr")
    ["don't", 'stop', 'vingt-deux']
    >>> tokens_for_scoring("iPhone を買った。", "ja")
    ['iphone', 'を', '買', 'っ', 'た']
    >>> tokens_for_scoring(None, "en")
    []
    """
    normalised = normalize(text, language)
    if unit_of(language) == "char":
        normalised = split_cer_chars(normalised)
    return normalised.split()
