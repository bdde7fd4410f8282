"""Every language fact of ilt, in one place.

* :data:`WHISPER_LANGUAGES`: the ISO 639-1 codes (and English names) of the
  languages Whisper has a token for: OpenAI's 99, plus ``yue`` (Cantonese)
  of large-v3. A language code anywhere in ilt is one of these.
* :data:`CER_LANGUAGES`: scored by character error rate (the MLC-SLM
  challenge's rule); every other language by word error rate.
* :data:`NO_SPACE_LANGUAGES`: written without spaces between words (chunk
  hypotheses are joined without one, Whisper's text tokens get no leading space).
* :func:`base_language` (``"pt-BR"`` -> ``"pt"``) and :func:`validate_language`.

A corpus's own naming (MLC-SLM's ``English/`` directories) belongs with that
corpus (:mod:`ilt.data.mlc_slm`). ``python -m ilt.data.languages`` lists the codes.
"""

from __future__ import annotations

import re

from ilt.errors import IltInputError

__all__ = [
    "CER_LANGUAGES",
    "NO_SPACE_LANGUAGES",
    "WHISPER_LANGUAGES",
    "base_language",
    "language_name",
    "validate_language",
]

#: ISO 639-1 code -> English name, in the order of Whisper's language tokens.
WHISPER_LANGUAGES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "de": "German", "es": "Spanish", "ru": "Russian",
    "ko": "Korean", "fr": "French", "ja": "Japanese", "pt": "Portuguese", "tr": "Turkish",
    "pl": "Polish", "ca": "Catalan", "nl": "Dutch", "ar": "Arabic", "sv": "Swedish",
    "it": "Italian", "id": "Indonesian", "hi": "Hindi", "fi": "Finnish", "vi": "Vietnamese",
    "he": "Hebrew", "uk": "Ukrainian", "el": "Greek", "ms": "Malay", "cs": "Czech",
    "ro": "Romanian", "da": "Danish", "hu": "Hungarian", "ta": "Tamil", "no": "Norwegian",
    "th": "Thai", "ur": "Urdu", "hr": "Croatian", "bg": "Bulgarian", "lt": "Lithuanian",
    "la": "Latin", "mi": "Maori", "ml": "Malayalam", "cy": "Welsh", "sk": "Slovak",
    "te": "Telugu", "fa": "Persian", "lv": "Latvian", "bn": "Bengali", "sr": "Serbian",
    "az": "Azerbaijani", "sl": "Slovenian", "kn": "Kannada", "et": "Estonian", "mk": "Macedonian",
    "br": "Breton", "eu": "Basque", "is": "Icelandic", "hy": "Armenian", "ne": "Nepali",
    "mn": "Mongolian", "bs": "Bosnian", "kk": "Kazakh", "sq": "Albanian", "sw": "Swahili",
    "gl": "Galician", "mr": "Marathi", "pa": "Punjabi", "si": "Sinhala", "km": "Khmer",
    "sn": "Shona", "yo": "Yoruba", "so": "Somali", "af": "Afrikaans", "oc": "Occitan",
    "ka": "Georgian", "be": "Belarusian", "tg": "Tajik", "sd": "Sindhi", "gu": "Gujarati",
    "am": "Amharic", "yi": "Yiddish", "lo": "Lao", "uz": "Uzbek", "fo": "Faroese",
    "ht": "Haitian Creole", "ps": "Pashto", "tk": "Turkmen", "nn": "Nynorsk", "mt": "Maltese",
    "sa": "Sanskrit", "lb": "Luxembourgish", "my": "Myanmar", "bo": "Tibetan", "tl": "Tagalog",
    "mg": "Malagasy", "as": "Assamese", "tt": "Tatar", "haw": "Hawaiian", "ln": "Lingala",
    "ha": "Hausa", "ba": "Bashkir", "jw": "Javanese", "su": "Sundanese", "yue": "Cantonese",
}

#: Languages scored by character error rate (Japanese, Korean, Thai); every
#: other language by word error rate.
CER_LANGUAGES = frozenset({"ja", "ko", "th"})

#: Languages written without spaces between words.
NO_SPACE_LANGUAGES = frozenset({"zh", "yue", "ja", "th", "lo", "my", "km"})

_NAME_TO_CODE = {name.lower(): code for code, name in WHISPER_LANGUAGES.items()}

LIST_COMMAND = "python -m ilt.data.languages"


def base_language(language: str) -> str:
    """``"JA"`` -> ``"ja"``, ``"pt-BR"`` -> ``"pt"``: the code without region or script."""
    return re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]


def language_name(code: str) -> str:
    """English name of a Whisper language code (``"yue"`` -> ``"Cantonese"``); the code itself if unknown."""
    return WHISPER_LANGUAGES.get(base_language(code), code)


def _suggestion(norm: str) -> str:
    """``" (did you mean 'en'?)"`` for a name or a regional code of a known language, else ``""``."""
    guess = _NAME_TO_CODE.get(norm) or (base_language(norm) if base_language(norm) in WHISPER_LANGUAGES else None)
    return f" (did you mean {guess!r}?)" if guess else ""


def validate_language(code: str, where: str = "") -> str:
    """Return ``code`` normalised (stripped, lower case) if Whisper knows the language.

    :param where: what the code came from (a file and line, an option), named in the error.
    :raises IltInputError: for any other code, saying how to list the known ones.
    """
    norm = str(code).strip().lower()
    if norm in WHISPER_LANGUAGES:
        return norm
    prefix = f"{where}: " if where else ""
    raise IltInputError(f"{prefix}unknown language code {code!r}{_suggestion(norm)}; use an ISO 639-1 code "
                        f"Whisper knows ({len(WHISPER_LANGUAGES)} of them; list them with: {LIST_COMMAND})")


def _main() -> None:
    for code, name in sorted(WHISPER_LANGUAGES.items()):
        flags = [f for f, on in (("CER", code in CER_LANGUAGES), ("no spaces", code in NO_SPACE_LANGUAGES)) if on]
        print(f"{code:4} {name}" + (f"  ({', '.join(flags)})" if flags else ""))


if __name__ == "__main__":
    _main()
