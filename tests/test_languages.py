"""Every language fact in one place (ilt.data.languages)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ilt.data.languages import (
    CER_LANGUAGES,
    NO_SPACE_LANGUAGES,
    WHISPER_LANGUAGES,
    base_language,
    language_name,
    validate_language,
)
from ilt.errors import IltInputError


def test_whisper_languages_are_the_99_plus_cantonese():
    assert len(WHISPER_LANGUAGES) == 100
    assert list(WHISPER_LANGUAGES)[:3] == ["en", "zh", "de"]  # the order of Whisper's tokens
    assert list(WHISPER_LANGUAGES)[-1] == "yue"
    for code, name in [("en", "English"), ("ja", "Japanese"), ("haw", "Hawaiian"), ("jw", "Javanese"),
                       ("yue", "Cantonese"), ("ht", "Haitian Creole"), ("no", "Norwegian"), ("vi", "Vietnamese")]:
        assert WHISPER_LANGUAGES[code] == name
    assert all(2 <= len(code) <= 3 and code.islower() for code in WHISPER_LANGUAGES)
    assert len(set(WHISPER_LANGUAGES.values())) == 100


def test_table_equals_the_whisper_tokenizer_table():
    tokenization = pytest.importorskip("transformers.models.whisper.tokenization_whisper")
    assert {code: name.lower() for code, name in WHISPER_LANGUAGES.items()} == tokenization.LANGUAGES


def test_cer_and_no_space_sets():
    assert CER_LANGUAGES == {"ja", "ko", "th"}
    assert NO_SPACE_LANGUAGES == {"zh", "yue", "ja", "th", "lo", "my", "km"}
    assert "ko" not in NO_SPACE_LANGUAGES  # Korean is written with spaces, scored by character
    assert CER_LANGUAGES <= set(WHISPER_LANGUAGES) and NO_SPACE_LANGUAGES <= set(WHISPER_LANGUAGES)


def test_base_language_and_names():
    assert base_language("pt-BR") == "pt"
    assert base_language(" JA ") == "ja"
    assert base_language("ko_KR") == "ko"
    assert base_language("zh-Hant-TW") == "zh"
    assert language_name("yue") == "Cantonese"
    assert language_name("pt-BR") == "Portuguese"
    assert language_name("xx") == "xx"


def test_validate_language_accepts_every_whisper_language():
    assert validate_language(" EN ") == "en"
    assert validate_language("Yue") == "yue"
    assert all(validate_language(code) == code for code in WHISPER_LANGUAGES)


def test_validate_language_errors_name_the_origin_and_the_list():
    with pytest.raises(IltInputError) as info:
        validate_language("zz", "data/train/lang:3")
    message = str(info.value)
    assert message.startswith("data/train/lang:3: unknown language code 'zz'")
    assert "python -m ilt.data.languages" in message and "\n" not in message
    with pytest.raises(IltInputError, match=r"^unknown language code 'xx'"):
        validate_language("xx")
    with pytest.raises(IltInputError, match=r"--language: unknown language code 'English' \(did you mean 'en'\?\)"):
        validate_language("English", "--language")
    with pytest.raises(IltInputError, match=r"unknown language code 'pt-BR' \(did you mean 'pt'\?\)"):
        validate_language("pt-BR")


def test_module_lists_the_languages():
    out = subprocess.run([sys.executable, "-m", "ilt.data.languages"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert len(out) == 100
    assert "ja   Japanese  (CER, no spaces)" in out
    assert "ko   Korean  (CER)" in out
    assert "yue  Cantonese  (no spaces)" in out
    assert "en   English" in out
