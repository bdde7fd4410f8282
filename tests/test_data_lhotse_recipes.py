"""Third-party corpora through Lhotse's own recipes, on a tiny LibriSpeech-layout corpus."""

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ilt.cli.main import cli
from ilt.data.lhotse_recipes import prepare_lhotse
from ilt.data.manifests import load_cuts
from ilt.errors import IltInputError


@pytest.fixture
def librispeech(tmp_path):
    root = tmp_path / "LibriSpeech"
    chapter = root / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    lines = []
    for i, text in enumerate(["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"]):
        utt = f"84-121123-{i:04d}"
        sf.write(chapter / f"{utt}.flac", 0.1 * np.sin(np.arange(16000 * (i + 1)) / 7), 16000)
        lines.append(f"{utt} {text}")
    (chapter / "84-121123.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_recipe_gets_iso_language(librispeech, tmp_path):
    out = prepare_lhotse(librispeech, tmp_path / "out", recipe="librispeech", language="en",
                         option=["dataset_parts=[dev-clean]"])
    assert list(out) == ["dev-clean"]
    cuts = load_cuts(tmp_path / "out" / "librispeech_cuts_dev-clean.jsonl.gz")
    assert sorted(c.id for c in cuts) == ["84-121123-0000", "84-121123-0001"]
    assert {c.supervisions[0].language for c in cuts} == {"en"}
    assert sorted(round(c.duration) for c in cuts) == [1, 2]
    assert "GO DO YOU HEAR" in {c.supervisions[0].text for c in cuts}


def test_bad_recipe_option_and_language(librispeech, tmp_path):
    with pytest.raises(IltInputError, match="lhotse has no prepare_nope; known: .*librispeech"):
        prepare_lhotse(librispeech, tmp_path, recipe="nope")
    with pytest.raises(IltInputError, match="takes no bogus"):
        prepare_lhotse(librispeech, tmp_path, recipe="librispeech", language="en", option=["bogus=1"])
    with pytest.raises(IltInputError, match="unknown language code 'xx'"):
        prepare_lhotse(librispeech, tmp_path, recipe="librispeech", language="xx")


def test_cli(librispeech, tmp_path):
    res = CliRunner().invoke(cli, ["prepare", "lhotse", str(librispeech), str(tmp_path / "o"),
                                   "--recipe", "librispeech", "--language", "en",
                                   "--option", "dataset_parts=[dev-clean]"])
    assert res.exit_code == 0, res.output
    assert "lhotse: dev-clean: 2 cuts" in res.output
