"""The 11 languages of the MLC-SLM challenge: directory names and ISO 639-1 codes."""

from __future__ import annotations

from ilt.errors import IltInputError

#: Challenge directory name -> ISO 639-1 code.
LANGUAGES: dict[str, str] = {
    "English": "en",
    "French": "fr",
    "German": "de",
    "Italian": "it",
    "Japanese": "ja",
    "Korean": "ko",
    "Portuguese": "pt",
    "Russian": "ru",
    "Spanish": "es",
    "Thai": "th",
    "Vietnamese": "vi",
}

#: ISO 639-1 code -> challenge directory name.
ISO_TO_LANGUAGE: dict[str, str] = {iso: name for name, iso in LANGUAGES.items()}


def known_languages() -> str:
    """``"de (German), en (English), ..."``: for error messages."""
    return ", ".join(f"{iso} ({ISO_TO_LANGUAGE[iso]})" for iso in sorted(ISO_TO_LANGUAGE))


def validate_language(code: str, where: str = "") -> str:
    """Return ``code`` normalised (lower case) if it is a challenge language.

    :param where: what the code came from (a file, an option), named in the error.
    :raises IltInputError: for an unknown code, listing the known ones.
    """
    norm = str(code).strip().lower()
    if norm not in ISO_TO_LANGUAGE:
        prefix = f"{where}: " if where else ""
        raise IltInputError(f"{prefix}unknown language code {code!r}; known: {known_languages()}")
    return norm


def iso_of_dir(name: str) -> str | None:
    """ISO code for a challenge language directory name (``"English"`` -> ``"en"``), else None."""
    return LANGUAGES.get(name)
