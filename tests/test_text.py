"""MLC-SLM text normalisation and scoring units (ilt.data.text)."""

import string

import pytest

from ilt.data.languages import CER_LANGUAGES
from ilt.data.text import (
    PUNCTUATION,
    normalize,
    split_cer_chars,
    tokens_for_scoring,
    unit_of,
)


def test_punctuation_set_is_ascii_minus_apostrophe_hyphen_plus_challenge_marks():
    ascii_part = set(string.punctuation) - {"'", "-"}
    assert set(PUNCTUATION) == ascii_part | set("。、？！・¿¡，")


@pytest.mark.parametrize("mark", sorted(set(string.punctuation) - {"'", "-"}))
def test_each_ascii_punctuation_mark_is_deleted(mark):
    assert normalize(f"one{mark} two {mark}three", "en") == "one two three"


@pytest.mark.parametrize("mark", list("。、？！・，"))
def test_full_width_cjk_marks_are_deleted(mark):
    assert normalize(f"今日は{mark}晴れ", "ja") == "今日は晴れ"


def test_spanish_inverted_marks_are_deleted():
    assert normalize("¿Qué tal? ¡Muy bien!", "es") == "qué tal muy bien"


def test_apostrophes_and_hyphens_are_kept():
    assert normalize("Don't STOP, it's a well-known rock-'n'-roll!", "en") == \
        "don't stop it's a well-known rock-'n'-roll"
    assert normalize("Vingt-deux, c'est l'heure.", "fr") == "vingt-deux c'est l'heure"


def test_marks_outside_the_challenge_list_are_kept():
    # The challenge deletes no other Unicode punctuation and applies no NFKC.
    assert normalize("«Bonjour» “hi” 「はい」 ＡＢＣ", "fr") == "«bonjour» “hi” 「はい」 ａｂｃ"


def test_case_and_whitespace():
    assert normalize("  HeLLo\tWORLD \n Ünïcode ÉTÉ  ", "de") == "hello world ünïcode été"
    assert normalize("Привет,  МИР!", "ru") == "привет мир"
    assert normalize("a\u3000b", "ja") == "a b"  # ideographic space
    assert normalize(" ... ", "en") == ""
    assert normalize(None, "en") == ""
    assert normalize("", "en") == ""


def test_units():
    assert CER_LANGUAGES == {"ja", "ko", "th"}
    for lang in ("ja", "ko", "th", "JA", "ja-JP", "ko_KR"):
        assert unit_of(lang) == "char"
    for lang in ("en", "fr", "de", "it", "pt", "ru", "es", "vi", "zh", "en-US"):
        assert unit_of(lang) == "word"


def test_japanese_characters_latin_words_and_digits_stay_whole():
    assert tokens_for_scoring("今日はiPhoneを2台、買った。", "ja") == \
        ["今", "日", "は", "iphone", "を", "2", "台", "買", "っ", "た"]
    assert tokens_for_scoring("カタカナ ｶﾀｶﾅ", "ja") == ["カ", "タ", "カ", "ナ", "ｶ", "ﾀ", "ｶ", "ﾅ"]


def test_korean_word_spaces_do_not_count():
    assert tokens_for_scoring("안녕하세요, 반갑습니다!", "ko") == \
        ["안", "녕", "하", "세", "요", "반", "갑", "습", "니", "다"]
    assert tokens_for_scoring("안녕 OK good", "ko") == ["안", "녕", "ok", "good"]


def test_thai_every_code_point_including_vowel_marks():
    # ส ว ั ส ด ี : the combining vowel signs count as units, as in the challenge.
    assert tokens_for_scoring("สวัสดี ok", "th") == ["ส", "ว", "ั", "ส", "ด", "ี", "ok"]


def test_word_languages_are_not_split_into_characters():
    assert tokens_for_scoring("I said 日本語 twice.", "en") == ["i", "said", "日本語", "twice"]
    assert tokens_for_scoring("Xin chào các bạn", "vi") == ["xin", "chào", "các", "bạn"]


def test_split_cer_chars_directly():
    assert split_cer_chars("abc日本 def") == "abc 日 本 def"
    assert split_cer_chars("") == ""


@pytest.mark.parametrize("text,lang", [
    ("今日はiPhoneを買った", "ja"), ("안녕하세요 반갑습니다", "ko"), ("สวัสดีครับ", "th"),
    ("Well-known don't, OK?", "en"),
])
def test_units_are_idempotent(text, lang):
    """Re-reading our own .trn units gives the same units."""
    units = tokens_for_scoring(text, lang)
    assert tokens_for_scoring(" ".join(units), lang) == units
