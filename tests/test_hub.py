"""Hub model IDs: `--model ORG/NAME[@REVISION]` resolved offline from a
Hugging Face cache laid out here (blobs, snapshots, refs), the revision
recorded in the lineage of a merge."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from click.testing import CliRunner

from ilt.errors import IltInputError
from ilt.models.hub import (
    looks_like_hub_id,
    resolve_model,
    snapshot_info,
    split_reference,
)

COMMIT_MAIN = "a" * 39 + "1"
COMMIT_V1 = "b" * 39 + "2"


def _add_snapshot(cache, repo_id: str, commit: str, src_dir, refs: tuple[str, ...]) -> None:
    """Lay ``src_dir`` out as huggingface_hub does: content-addressed blobs,
    a snapshot of symlinks, and refs naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in sorted(src_dir.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    from ilt.testing.dummies import tiny_whisper_dir

    tmp = tmp_path_factory.mktemp("hub")
    model = tiny_whisper_dir(tmp / "src")
    cache = tmp / "cache"
    _add_snapshot(cache, "acme/whisper-tiny", COMMIT_MAIN, model, ("main",))
    _add_snapshot(cache, "acme/whisper-tiny", COMMIT_V1, model, ("v1",))
    return cache


@pytest.fixture
def offline(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    return hub_cache


def test_reference_syntax():
    assert split_reference("acme/m@v1") == ("acme/m", "v1") and split_reference("acme/m") == ("acme/m", None)
    assert looks_like_hub_id("openai/whisper-large-v3") and looks_like_hub_id("acme/m@" + COMMIT_MAIN)
    for path in ("./exp/M0", "/abs/M0", "~/M0", "exp/a/b", "M0"):
        assert not looks_like_hub_id(path)


def test_hub_ids_resolve_from_an_offline_cache(offline, tmp_path, monkeypatch):
    main = resolve_model("acme/whisper-tiny")
    assert main.name == COMMIT_MAIN and (main / "config.json").is_file()
    assert snapshot_info(main) == {"repo_id": "acme/whisper-tiny", "revision": COMMIT_MAIN}
    assert resolve_model("acme/whisper-tiny@v1").name == COMMIT_V1  # a ref
    assert resolve_model(f"acme/whisper-tiny@{COMMIT_V1}").name == COMMIT_V1  # a commit
    assert resolve_model("acme/whisper-tiny", revision="v1").name == COMMIT_V1

    local = tmp_path / "acme" / "whisper-tiny"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("acme/whisper-tiny") == local.relative_to(tmp_path)  # a local directory wins

    with pytest.raises(IltInputError, match="not in cache .*HF_HUB_OFFLINE is set") as err:
        resolve_model("hf:acme/absent")  # hf: is always the hub, even beside a local acme/
    assert "\n" not in str(err.value)
    with pytest.raises(IltInputError, match="^acme/absent: no such local directory acme/absent; to download "
                                            "from the Hugging Face Hub write hf:acme/absent$"):
        resolve_model("acme/absent")  # acme/ exists here: a path, never the hub
    assert resolve_model("hf:acme/whisper-tiny").name == COMMIT_MAIN  # the prefix wins over the local directory
    with pytest.raises(IltInputError, match="acme/whisper-tiny@v9.*write hf:acme/whisper-tiny@v9"):
        resolve_model("acme/whisper-tiny@v9")
    with pytest.raises(IltInputError, match="acme/whisper-tiny@v9"):
        resolve_model("hf:acme/whisper-tiny@v9")
    with pytest.raises(IltInputError, match="no such model directory"):
        resolve_model("./nowhere")


def test_cli_merge_on_a_hub_id_records_the_revision(offline, tmp_path):
    from ilt.cli.main import cli
    from ilt.config import RoundConfig, dump_yaml, from_dict
    from ilt.core.registry import create
    from ilt.training.lora import attach_lora

    base = resolve_model("acme/whisper-tiny@v1")
    config = from_dict(RoundConfig, {"name": "focus", "lora": {"r": 2, "lora_alpha": 4},
                                     "task": {"data": [{"cuts": "train.jsonl.gz", "weight": 1.0}]}})
    adapter = tmp_path / "best"
    model = attach_lora(create("backbone", "whisper", base), config.lora)
    model.save_pretrained(str(adapter))
    (adapter / "round.yaml").write_text(dump_yaml(config))

    runner = CliRunner()
    result = runner.invoke(cli, ["merge", "--model", "acme/whisper-tiny@v1", "--adapter", str(adapter),
                                 "--out", str(tmp_path / "M1")])
    assert result.exit_code == 0, result.output
    lineage = json.loads((tmp_path / "M1" / "lineage.json").read_text())
    assert lineage["base"]["repo_id"] == "acme/whisper-tiny" and lineage["base"]["revision"] == COMMIT_V1
    assert lineage["base"]["source"] == f"hub:acme/whisper-tiny@{COMMIT_V1}"
    assert str(offline) not in json.dumps(lineage)  # the cache path is never recorded
    card = (tmp_path / "M1" / "README.md").read_text()
    assert "base_model: acme/whisper-tiny" in card and COMMIT_V1 in card

    result = runner.invoke(cli, ["merge", "--model", "acme/absent", "--adapter", str(adapter),
                                 "--out", str(tmp_path / "M2")])
    assert result.exit_code == 2 and "acme/absent: not a local directory" in result.output


def test_a_local_looking_path_is_never_fetched(tmp_path, monkeypatch):
    """``exp/M0`` typed in a folder with ``exp/`` but no ``exp/M0`` is refused
    before any hub call; ``hf:`` says what to write instead."""
    import ilt.models.hub as hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp").mkdir()
    monkeypatch.setattr(hub, "snapshot_download_dir", lambda *a, **k: pytest.fail("the hub was called"))
    with pytest.raises(IltInputError) as err:
        resolve_model("exp/M0")
    assert str(err.value) == "exp/M0: no such local directory exp/M0; to download from the Hugging Face Hub " \
                             "write hf:exp/M0"
    for value in ("./exp/M0", "exp/.M0", "hf:../x", "hf:/abs/x"):
        with pytest.raises(IltInputError):
            resolve_model(value)


def test_ilt_offline_forbids_the_network_and_a_moving_revision_warns(hub_cache, monkeypatch, caplog):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("ILT_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    with pytest.raises(IltInputError, match="^acme/absent: not a local directory, and not in cache .*"
                                            r"\(ILT_OFFLINE is set\)") as err:
        resolve_model("acme/absent")
    assert "\n" not in str(err.value)
    with caplog.at_level("WARNING", logger="ilt.models.hub"):
        assert resolve_model("acme/whisper-tiny@v1").name == COMMIT_V1
    assert "revision 'v1' is not a commit" in caplog.text and f"acme/whisper-tiny@{COMMIT_V1}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ilt.models.hub"):
        resolve_model(f"acme/whisper-tiny@{COMMIT_V1}")
    assert "not a commit" not in caplog.text  # a pinned commit: no warning


def test_pyannote_obeys_offline(tmp_path, monkeypatch):
    from ilt.plugins.diarizers import PyannoteDiarizer

    (tmp_path / "config.yaml").write_text("pipeline:\n  name: pyannote.audio.pipelines.SpeakerDiarization\n"
                                          "  params:\n    segmentation: pyannote/segmentation-3.0\n")
    monkeypatch.setenv("ILT_OFFLINE", "1")
    with pytest.raises(IltInputError, match="names the hub model 'pyannote/segmentation-3.0', and ILT_OFFLINE "
                                            "is set"):
        PyannoteDiarizer(pipeline_dir=str(tmp_path))
