"""Speaker-similarity selectors (wavlm on a tiny random WavLMForXVector, resemblyzer's
real bundled encoder) and `ilt select`: SECS, threshold, cache, histogram, skips."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ilt.cli.main import cli
from ilt.components import SELECT_SCORE, ScoringSelector
from ilt.core.registry import create
from ilt.core.runtime import Skips
from ilt.data.manifests import load_cuts, save_manifest
from ilt.errors import IltInputError
from ilt.knowledge.speaker_select import histogram
from ilt.plugins.selectors import WavLMSelector, normalize
from ilt.testing.dummies import espeak_available, espeak_cuts, make_cuts


def test_histogram_counts_and_what_each_threshold_keeps():
    rows = histogram([0.81, 0.86, 0.87, 0.93, 1.0])
    assert [(r["low"], r["count"], r["kept_from"]) for r in rows] == [
        (0.8, 1, 5), (0.85, 2, 4), (0.9, 1, 2), (0.95, 1, 1)]
    assert histogram([]) == []


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory):
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    path = tmp_path_factory.mktemp("wavlm")
    config = WavLMConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, tdnn_dim=(16, 16), tdnn_kernel=(3, 1),
                         tdnn_dilation=(1, 1), xvector_output_dim=8, num_buckets=32, max_bucket_distance=100)
    torch.manual_seed(0)
    WavLMForXVector(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(path)
    return path


def _sets(tmp_path):
    rng = np.random.default_rng(0)

    def voice(f0, seconds, seed):
        t = np.arange(int(16000 * seconds)) / 16000
        noise = np.random.default_rng(seed).standard_normal(t.size)
        return (0.2 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * noise).astype("f4")

    reference = make_cuts(tmp_path / "ref", [
        {"id": "r1", "speaker": "A", "audio": voice(140, 1.0, 1)}, {"id": "r2", "speaker": "A", "audio": voice(150, 0.8, 2)},
        {"id": "r3", "speaker": "B", "audio": voice(260, 1.2, 3)}, {"id": "r-sil", "speaker": "C", "silent": True}])
    pool = make_cuts(tmp_path / "pool", [
        {"id": "c1", "audio": voice(145, 0.9, 4)}, {"id": "c2", "audio": voice(255, 1.1, 5)},
        {"id": "c3", "audio": voice(400, 0.7, 6)}, {"id": "c-sil", "silent": True},
        {"id": "c-quiet", "audio": (1e-4 * rng.standard_normal(16000)).astype("f4")}])
    ref_path, pool_path = tmp_path / "ref.jsonl.gz", tmp_path / "pool.jsonl.gz"
    save_manifest(reference, ref_path)
    save_manifest(pool, pool_path)
    return reference, pool, ref_path, pool_path


def test_wavlm_secs_is_the_cosine_to_the_nearest_reference_speaker_mean(tmp_path, tiny_wavlm):
    reference, pool, _, _ = _sets(tmp_path)
    selector = create("selector", "wavlm", model_dir=str(tiny_wavlm), batch_size=1)
    assert isinstance(selector, ScoringSelector)
    skips = Skips("test")
    scores = selector.scores(pool, reference, skips)
    assert sorted(scores) == ["c1", "c2", "c3"]
    assert skips.counts() == {"reference: no speech": 1, "no speech": 2}
    # by hand: one embedding per cut, speaker means over A's two cuts and B's one
    from ilt.data.audio import load_mono

    emb = {c.id: selector.embed_batch([load_mono(c, 16000)])[0] for c in list(reference)[:3] + list(pool)[:3]}
    means = normalize(np.stack([normalize(np.stack([emb["r1"], emb["r2"]])).mean(0), emb["r3"]]))
    for cid in ("c1", "c2", "c3"):
        assert scores[cid] == pytest.approx(float((normalize(emb[cid]) @ means.T).max()), abs=1e-5)
    threshold = sorted(scores.values())[1]  # keeps exactly the best-scoring candidate
    kept = create("selector", "wavlm", model_dir=str(tiny_wavlm), threshold=threshold,
                  batch_size=1).select(pool, reference)
    assert [c.id for c in kept] == [max(scores, key=scores.get)]
    assert list(kept)[0].custom[SELECT_SCORE] == pytest.approx(max(scores.values()), abs=1e-5)


def test_ilt_select_writes_kept_cuts_histogram_and_reuses_its_cache(tmp_path, tiny_wavlm, monkeypatch):
    _, _, ref_path, pool_path = _sets(tmp_path)
    out = tmp_path / "sel"
    args = ["select", "--selector", f"{{name: wavlm, model_dir: {tiny_wavlm}}}", "--reference", str(ref_path),
            "--candidates", str(pool_path), "--out", str(out)]
    res = CliRunner().invoke(cli, args + ["--threshold", "-1", "--png"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["candidates"] == 5 and summary["scored"] == 3 and summary["kept"] == 3
    assert summary["skipped"] == {"reference: no speech": 1, "no speech": 2}
    assert sum(r["count"] for r in summary["histogram"]) == 3
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    kept = load_cuts(out / "cuts.jsonl.gz")
    assert [c.id for c in kept] == ["c1", "c2", "c3"]
    assert [c.custom[SELECT_SCORE] for c in kept] == [r["score"] for r in scores]
    assert "| score | count |" in (out / "histogram.md").read_text() and "| score | count |" in res.output
    assert (out / "histogram.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "embeddings").glob("wavlm-*.npz"))) == 1

    # a second run, with another threshold, embeds nothing: every cut (and every silence) is cached
    def no_embedding(self, audios):
        raise AssertionError("embedded again despite the cache")

    monkeypatch.setattr(WavLMSelector, "embed_batch", no_embedding)
    top = max(r["score"] for r in scores)
    res = CliRunner().invoke(cli, args + ["--threshold", str(top - 1e-4)])
    assert res.exit_code == 0, res.output
    assert [c.id for c in load_cuts(out / "cuts.jsonl.gz")] == [max(scores, key=lambda r: r["score"])["id"]]


def test_select_bad_input(tmp_path, tiny_wavlm):
    with pytest.raises(IltInputError, match="model_dir"):
        create("selector", "wavlm", model_dir=str(tmp_path / "nothing"))
    silent = tmp_path / "silent.jsonl.gz"
    save_manifest(make_cuts(tmp_path / "s", [{"id": "s1", "silent": True}, {"id": "s2", "silent": True}]), silent)
    res = CliRunner().invoke(cli, ["select", "--selector", f"{{name: wavlm, model_dir: {tiny_wavlm}}}",
                                   "--reference", str(silent), "--candidates", str(silent), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no reference cut with speech" in res.output
    res = CliRunner().invoke(cli, ["select", "--selector", "wavlm", "--reference", str(silent),
                                   "--candidates", str(silent), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "model_dir" in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")
def test_resemblyzer_batches_like_its_own_encoder_and_separates_voices(tmp_path):
    pytest.importorskip("resemblyzer")
    from resemblyzer import preprocess_wav

    from ilt.data.audio import load_mono

    reference = espeak_cuts(tmp_path / "r", ["the weather is fine today", "please close the door"],
                            voice="en-us+m1", prefix="ref")
    pool = espeak_cuts(tmp_path / "p", ["we walked along the river"], voice="en-us+m1", prefix="same")
    other = espeak_cuts(tmp_path / "o", ["we walked along the river"], voice="de+f4", prefix="other")
    selector = create("selector", "resemblyzer")
    wavs = [preprocess_wav(load_mono(c, 16000)) for c in list(reference) + list(pool)]
    batched = selector.embed_batch(wavs)
    one_by_one = np.stack([selector.encoder.embed_utterance(w) for w in wavs])
    assert np.allclose(batched, one_by_one, atol=1e-5)
    scores = selector.scores(pool + other, reference)
    assert scores["same-000"] > scores["other-000"]


# --------------------------------------------------------------------------- the embedding cache's key (docs/security.md)


def _copy_wavlm(src, dst, seed=None):
    """A copy of ``src`` under another name; with ``seed``, other random weights of the same shape."""
    import shutil

    import torch
    from transformers import WavLMForXVector

    shutil.copytree(src, dst)
    if seed is not None:
        model = WavLMForXVector.from_pretrained(dst)
        torch.manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0.0, 0.5)
        model.save_pretrained(dst)
    return dst


def test_the_embedding_cache_is_keyed_by_the_weights_not_the_folder(tmp_path, tiny_wavlm):
    from reliability_table import check

    same = create("selector", "wavlm", model_dir=str(_copy_wavlm(tiny_wavlm, tmp_path / "copy" / "wavlm")))
    first = create("selector", "wavlm", model_dir=str(tiny_wavlm))
    other = create("selector", "wavlm", model_dir=str(_copy_wavlm(tiny_wavlm, tmp_path / "other" / "wavlm", 1)))
    assert same.identity() == first.identity()  # one model, two folders: one cache
    check("bad input", "two WavLM models in folders of the same name (speaker selection's embedding cache)",
          "two caches: the key is the sha256 of the safetensors weights and config", f"identities: "
          f"{first.identity()!r} vs {other.identity()!r}", first.identity() != other.identity()
          and first.identity().split()[1] not in (None, "None"))


def test_a_bin_only_wavlm_is_refused(tmp_path, tiny_wavlm):
    import torch
    from reliability_table import check

    model_dir = _copy_wavlm(tiny_wavlm, tmp_path / "bin")
    weights = next(model_dir.glob("*.safetensors"))
    from safetensors.torch import load_file

    torch.save(load_file(weights), model_dir / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(IltInputError) as err:
        create("selector", "wavlm", model_dir=str(model_dir))
    check("bad input", "WavLM directory with pytorch_model.bin only (a pickle, no weight hash)", "error: one line: "
          "no safetensors, how to convert; nothing unpickled", f"[in-process create] "
          f"{str(err.value).replace(str(tmp_path), '…')[:150]}",
          "\n" not in str(err.value) and "no *.safetensors" in str(err.value))
