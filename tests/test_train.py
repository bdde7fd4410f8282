"""The ILT training loop on a tiny random Whisper (2 s window), on CPU."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ilt.config import RoundConfig, dump_yaml, from_dict
from ilt.errors import IltInputError
from ilt.hookspecs import hookimpl
from ilt.testing.configs import fast_decode
from ilt.training.loop import list_checkpoints, train_round

#: Fast dev decoding for a random model: greedy, a few tokens, no fallback.
FAST_DECODE = fast_decode()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Manifests: ``train`` (4 cuts), ``dev`` (en + fr), sources ``a`` and ``b``, ``bad``,
    ``empty``, ``enfr`` (2 en + 2 fr cuts), ``many`` (16 cuts of 0.5 to 2 s), ``32`` (1.9 to 3 s)."""
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts

    tmp = tmp_path_factory.mktemp("data")
    texts = ["hello world", "good morning", "thank you", "see you soon"]
    sets = {
        "train": make_cuts(tmp / "train", [{"id": f"t{i}", "text": t, "duration": 1.5}
                                           for i, t in enumerate(texts)]),
        "dev": make_cuts(tmp / "dev", [{"id": "d-en", "text": "hello there", "duration": 1.5},
                                       {"id": "d-fr", "text": "bonjour", "language": "fr", "duration": 1.0}]),
        "a": make_cuts(tmp / "a", [{"id": f"a{i}", "text": "alpha", "duration": 0.5} for i in range(4)]),
        "b": make_cuts(tmp / "b", [{"id": f"b{i}", "text": "beta", "duration": 0.5} for i in range(4)]),
        "bad": make_cuts(tmp / "bad", [{"id": "ok", "text": "fine"}, {"id": "no-text", "text": ""},
                                       {"id": "broken", "text": "broken audio", "corrupt": True},
                                       {"id": "ok2", "text": "also fine"}]),
        "empty": make_cuts(tmp / "empty", [{"id": "e0", "text": ""}]),
        "many": make_cuts(tmp / "many", [{"id": f"m{i:02d}", "text": texts[i % 4], "duration": 0.5 + 0.1 * i}
                                         for i in range(16)]),
        # durations of the benchmark's 32 espeak-ng sentences (1.9 to 3 s)
        "32": make_cuts(tmp / "32", [{"id": f"s{i:02d}", "text": texts[i % 4], "duration": 1.88 + 0.035 * i}
                                     for i in range(32)]),
        "enfr": make_cuts(tmp / "enfr", [{"id": f"{lang}{i}", "text": "salut", "language": lang, "duration": 0.5}
                                         for lang in ("en", "fr") for i in range(2)]),
    }
    return {name: save_manifest(cuts, tmp / f"{name}.jsonl.gz") for name, cuts in sets.items()}


def _config(**train) -> RoundConfig:
    return from_dict(RoundConfig, {
        "name": "focus",
        "lora": {"r": 4, "lora_dropout": 0.1},  # lora_alpha: its int default, read back from YAML as float
        "train": {"lr": 1e-3, "micro_batch": 2, "precision": "fp32", **train},
    })


def _scripted_dev(monkeypatch, scores):
    """Replace dev evaluation by ``scores[step]`` (metric, loss and the one row alike);
    return the list of the steps evaluated, in order."""
    import ilt.training.evaluate

    seen = []

    def evaluate(backbone, model, loss_fn, dev, decode_config, *, metric, micro_batch, device, step, collective=None):
        seen.append(step)
        value = scores[step]
        return {"step": step, "metric": metric, "value": value, "dev_loss": value, "group_by": "language",
                "rows": [{"group": "en", "error_rate": value}], "overall": {"error_rate": value}}

    monkeypatch.setattr(ilt.training.evaluate, "evaluate", evaluate)
    return seen


@pytest.fixture
def extra_losses(monkeypatch):
    """Register test-only losses through the real hook, for one test."""
    import ilt.core.registry as plugins

    losses: dict = {}

    class Plugin:
        @staticmethod
        @hookimpl
        def ilt_register_losses(register):
            for name, factory in losses.items():
                register(name, factory)

    pm = plugins.build_plugin_manager(load_entry_points=False)
    pm.register(Plugin, name="tests:losses")
    monkeypatch.setattr(plugins, "get_registry", lambda: plugins.Registry.from_plugin_manager(pm))
    try:
        yield losses.__setitem__
    finally:
        pm.unregister(Plugin)



def test_tiny_run_writes_best_final_and_logs(base_dir, data, tmp_path):
    config = _config(max_steps=4, eval_every=2, precision="bf16", gradient_checkpointing=True)
    out = tmp_path / "focus"
    with pytest.warns(UserWarning, match="training in fp32"):
        result = train_round(config, base_dir, out, train_cuts=[(data["train"], 1.0)], dev_cuts=data["dev"],
                             decode_config=FAST_DECODE, command="ilt train --config focus.yaml")

    assert result.steps == 4 and result.seconds > 0 and result.skipped == {}
    assert result.best_dir == out / "best" and result.final_dir == out / "final"
    for name in ("best", "final"):
        files = {p.name for p in (out / name).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "round.yaml", "score.json",
                "manifests.json"} <= files
        assert not any(f.endswith(".bin") for f in files)
    assert (out / "command.txt").read_text() == "ilt train --config focus.yaml\n"
    saved = yaml.safe_load((out / "round.yaml").read_text())
    assert saved["task"]["data"] == [{"cuts": str(data["train"]), "weight": 1.0, "languages": None, "weight_by": "share"}]
    assert (out / "best" / "round.yaml").read_text() == (out / "round.yaml").read_text()
    assert list(out.glob("tensorboard/**/events.out.tfevents.*"))

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["precision"] == "fp32"
    assert [r["step"] for r in log if r["event"] == "step"] == [1, 2, 3, 4]
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4]  # step 0: the incoming model competes (select.include_start)
    assert all(set(r["per_language"]) == {"en", "fr"} and r["dev_loss"] > 0 for r in evals)

    best = json.loads((out / "best" / "score.json").read_text())
    winner = min(evals, key=lambda r: (r["dev_wer"], r["step"]))
    assert best["step"] == winner["step"] and best["value"] == winner["dev_wer"] == result.best_metric
    assert {row["group"] for row in best["rows"]} == {"en", "fr"} and "overall" in best
    assert result.best_score["step"] == best["step"] and "best dev_wer" in result.summary()
    final = json.loads((out / "final" / "score.json").read_text())
    assert final["step"] == 4 and final["value"] == evals[-1]["dev_wer"]
    manifests = json.loads((out / "manifests.json").read_text())
    assert [m["role"] for m in manifests] == ["train", "dev"] and all(len(m["sha256"]) == 64 for m in manifests)
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]


def test_the_lowest_dev_score_is_kept(base_dir, data, tmp_path, monkeypatch):
    """best/ is the adapter of the *lowest* dev score, and a later tie does not
    replace it. The tiny random model's dev WER ties at every evaluation, so
    the scores are set here: 0.9, 0.3, 0.3, 0.6 at steps 2, 4, 6, 8. Keeping
    the highest (``<`` flipped to ``>``) would keep step 2, ``<=`` step 6, and
    keeping the last evaluation step 8."""
    import torch
    from safetensors.torch import load_file

    scores = {0: 1.0, 2: 0.9, 4: 0.3, 6: 0.3, 8: 0.6}

    _scripted_dev(monkeypatch, scores)
    out = tmp_path / "best-of-4"
    result = train_round(_config(max_steps=8, eval_every=2, save_every=4), base_dir, out,
                         train_cuts=[(data["train"], 1.0)], dev_cuts=data["dev"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["dev_wer"]) for r in log if r["event"] == "eval"] == sorted(scores.items())
    assert result.best_metric == 0.3 and result.best_score["step"] == 4
    assert json.loads((out / "best" / "score.json").read_text())["step"] == 4
    best = load_file(out / "best" / "adapter_model.safetensors")
    step4 = load_file(out / "checkpoints" / "step-4" / "adapter" / "adapter_model.safetensors")
    step8 = load_file(out / "final" / "adapter_model.safetensors")
    assert best.keys() == step4.keys() and all(torch.equal(best[k], step4[k]) for k in best)
    assert any(not torch.equal(best[k], step8[k]) for k in best)  # the weights moved after step 4


def test_patience_ends_the_round_and_a_rerun_trains_no_further(base_dir, data, tmp_path, monkeypatch):
    """select.patience 2 with dev scores 0.5, 0.4, 0.45, 0.6 at steps 2, 4, 6, 8 (of max_steps 20)
    stops at step 8: best/ is step 4's adapter, final/ step 8's, a checkpoint is saved at the stop,
    and running the same command again resumes there and does not train on."""
    scores = {0: 0.7, 2: 0.5, 4: 0.4, 6: 0.45, 8: 0.6, 10: 0.1}

    _scripted_dev(monkeypatch, scores)
    config = _config(max_steps=20, eval_every=2, save_every=10)
    config.select.patience = 2
    out = tmp_path / "patience"
    kwargs = dict(train_cuts=[(data["train"], 1.0)], dev_cuts=data["dev"])
    result = train_round(config, base_dir, out, **kwargs)
    assert result.steps == 8 and result.stopped_early == 8 and "early stop" in result.summary()
    assert result.best_score["step"] == 4
    assert json.loads((out / "final" / "score.json").read_text())["step"] == 8
    assert [s for s, _ in list_checkpoints(out)] == [8]
    again = train_round(config, base_dir, out, **kwargs)
    assert again.steps == 8 and again.stopped_early == 8 and again.best_score["step"] == 4
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "step"]
    assert steps == list(range(1, 9))


@pytest.mark.parametrize("include_start", [True, False])
def test_the_incoming_model_competes_for_best(base_dir, data, tmp_path, monkeypatch, caplog, include_start):
    """Dev scores 0.2 at step 0 (the incoming model), then 0.5 and 0.4: with select.include_start
    best/ is the untrained LoRA (every lora_B zero), merging it gives the incoming weights exactly,
    and the round warns; without it step 0 is not scored and step 4 is the best."""
    import torch
    from safetensors.torch import load_file

    scores = {0: 0.2, 2: 0.5, 4: 0.4}
    seen = _scripted_dev(monkeypatch, scores)
    config = _config(max_steps=4, eval_every=2)
    config.select.include_start = include_start
    out = tmp_path / "start"
    with caplog.at_level("WARNING", logger="ilt"):
        result = train_round(config, base_dir, out, train_cuts=[(data["train"], 1.0)], dev_cuts=data["dev"])
    best = load_file(out / "best" / "adapter_model.safetensors")
    final = load_file(out / "final" / "adapter_model.safetensors")
    b_keys = [k for k in best if "lora_B" in k]
    assert b_keys and any(final[k].abs().sum() > 0 for k in b_keys)  # training moved the LoRA
    if not include_start:
        assert seen == [2, 4] and result.best_score["step"] == 4 and "incoming model" not in caplog.text
        return
    assert seen == [0, 2, 4] and result.best_score["step"] == 0 and result.best_metric == 0.2
    assert all(torch.count_nonzero(best[k]) == 0 for k in b_keys)
    assert "no checkpoint beat the incoming model" in caplog.text

    from ilt.training.lora import merge_adapter

    merged = merge_adapter(base_dir, out / "best", tmp_path / "M1")
    before, after = _weights(base_dir), _weights(merged)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_the_start_check_does_not_count_in_the_patience(base_dir, data, tmp_path, monkeypatch):
    """Dev scores 0.3 at step 0, then 0.5, 0.6, 0.4, 0.2 with select.patience 2: the trained
    checkpoints are compared among themselves (0.6 is the only stale check), so the round runs
    to step 8 and keeps it (0.2 < 0.3). Counting step 0 in the patience would have stopped it
    at step 4, in the early rise of a round's dev error, and kept the incoming model."""
    scores = {0: 0.3, 2: 0.5, 4: 0.6, 6: 0.4, 8: 0.2}

    _scripted_dev(monkeypatch, scores)
    config = _config(max_steps=8, eval_every=2)
    config.select.patience = 2
    out = tmp_path / "patience-start"
    result = train_round(config, base_dir, out, train_cuts=[(data["train"], 1.0)], dev_cuts=data["dev"])
    assert result.steps == 8 and result.stopped_early is None
    assert result.best_score["step"] == 8 and result.best_metric == 0.2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4, 6, 8] and evals[0]["start"] is True
    assert [r["stale_evals"] for r in evals[1:]] == [0, 1, 0, 0]
    assert (out / "start" / "adapter_config.json").is_file()


def _weights(model_dir):
    from safetensors.torch import load_file

    return {k: v for f in sorted(Path(model_dir).glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("source", ["train", "many"])  # 4 cuts: one bucket; 16 cuts: 4 buckets
def test_resume_gives_the_same_adapter(base_dir, data, tmp_path, source):
    config = _config(max_steps=5, grad_accum=2, save_every=2, eval_every=3, warmup_steps=1)
    kwargs = dict(train_cuts=[(data[source], 1.0)], dev_cuts=data["dev"], decode_config=FAST_DECODE)
    full = train_round(config, base_dir, tmp_path / "full", **kwargs)

    class Killed(Exception):
        pass

    def kill_at_3(step, record):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train_round(config, base_dir, tmp_path / "cut", on_step=kill_at_3, **kwargs)
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [2]
    resumed = train_round(config, base_dir, tmp_path / "cut", **kwargs)

    assert resumed.resumed_from == tmp_path / "cut" / "checkpoints" / "step-2"
    assert resumed.steps == full.steps == 5
    for name in ("final", "best"):
        a = (tmp_path / "full" / name / "adapter_model.safetensors").read_bytes()
        b = (tmp_path / "cut" / name / "adapter_model.safetensors").read_bytes()
        assert a == b, f"{name} adapter differs after resume"
    assert resumed.best_metric == full.best_metric
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [4, 5]  # the last two kept

    # A finished run re-run is a no-op that gives the same result.
    again = train_round(config, base_dir, tmp_path / "cut", **kwargs)
    assert again.steps == 5 and again.resumed_from.name == "step-5"
    # Another config in the same directory is refused, not silently mixed.
    with pytest.raises(IltInputError, match="different config"):
        train_round(_config(max_steps=5, lr=0.5), base_dir, tmp_path / "cut", **kwargs)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_nan_loss_names_step_and_cuts(base_dir, data, tmp_path, extra_losses, grad_accum):
    calls = []

    def nan_on_third_batch():
        def loss(backbone, model, batch):
            calls.append(list(batch.cut_ids))
            value = backbone.loss(model, batch)
            return value * float("nan") if len(calls) == 3 else value
        return loss

    extra_losses("nan-at-3", nan_on_third_batch)
    config = from_dict(RoundConfig, {
        **yaml.safe_load(dump_yaml(_config(max_steps=5, save_every=1, grad_accum=grad_accum))),
        "task": {"loss": "nan-at-3", "data": []}})
    out = tmp_path / "nan"
    with pytest.raises(IltInputError) as err:
        train_round(config, base_dir, out, train_cuts=[(data["train"], 1.0)])
    message = str(err.value)
    # micro-batch 3 is in optimiser step 3 (no accumulation) or 2 (two micro-batches a step)
    step = 3 if grad_accum == 1 else 2
    assert f"step {step}:" in message and "nan" in message
    assert all(cut_id in message for cut_id in calls[2])
    assert message.count("the loss is") == 1  # only the bad micro-batch is named
    assert (f"checkpoints/step-{step - 1}" in message) and [s for s, _ in list_checkpoints(out)] == list(range(1, step))
    assert not (out / "final").exists()


def test_data_mix_follows_weights(base_dir, data, tmp_path, extra_losses):
    seen: list[str] = []

    def counting():  # no forward pass: only the sampled cut IDs matter here
        def loss(backbone, model, batch):
            seen.extend(batch.cut_ids)
            return sum((p * 0).sum() for p in model.parameters() if p.requires_grad)
        return loss

    extra_losses("count", counting)
    fractions = []
    for weights in ([0.8, 0.2], [0.2, 0.8]):
        seen.clear()
        config = from_dict(RoundConfig, {**yaml.safe_load(dump_yaml(_config(max_steps=30, micro_batch=2))),
                                         "task": {"loss": "count", "data": [
                                             {"cuts": str(data["a"]), "weight": weights[0]},
                                             {"cuts": str(data["b"]), "weight": weights[1]}]}})
        train_round(config, base_dir, tmp_path / f"mix{weights[0]}")
        counts = Counter(cut_id[0] for cut_id in seen)
        assert len(seen) == 60
        fractions.append(counts["a"] / len(seen))
        # Each source (4 cuts) is repeated as often as its weight asks.
        assert max(Counter(seen).values()) > 4
    assert 0.65 < fractions[0] < 0.95 and 0.05 < fractions[1] < 0.35, fractions

    # A source's `languages` keeps only the cuts in those languages.
    seen.clear()
    config = from_dict(RoundConfig, {**yaml.safe_load(dump_yaml(_config(max_steps=3))),
                                     "task": {"loss": "count", "data": [
                                         {"cuts": str(data["enfr"]), "weight": 1.0, "languages": ["fr"]}]}})
    train_round(config, base_dir, tmp_path / "fr-only-count")
    assert seen and {cut_id[:2] for cut_id in seen} == {"fr"}


def test_bad_cuts_are_counted_and_bad_sources_named(base_dir, data, tmp_path):
    result = train_round(_config(max_steps=2), base_dir, tmp_path / "bad", train_cuts=[(data["bad"], 1.0)])
    assert result.skipped == {"empty transcript": 1, "unreadable audio": 1}

    with pytest.raises(IltInputError, match="empty.jsonl.gz.*no cuts with a transcript"):
        train_round(_config(max_steps=2), base_dir, tmp_path / "e",
                    train_cuts=[(data["train"], 1.0), (data["empty"], 1.0)])
    with pytest.raises(IltInputError, match="missing.jsonl.gz.*not found"):
        train_round(_config(max_steps=2), base_dir, tmp_path / "m", train_cuts=[(tmp_path / "missing.jsonl.gz", 1.0)])
    with pytest.raises(IltInputError, match=r"enfr.jsonl.gz.*in languages \['de'\]"):
        train_round(_config(max_steps=2), base_dir, tmp_path / "de", train_cuts=[(data["enfr"], 1.0, ["de"])])
    with pytest.raises(IltInputError, match="no training data"):
        train_round(_config(max_steps=2), base_dir, tmp_path / "n")


def test_small_training_sets_get_full_micro_batches(data):
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

    from ilt.config import DataSource
    from ilt.core.runtime import Skips
    from ilt.data.mix import Mix, bucket_count, make_sampler, training_stream

    mix = training_stream([DataSource(str(data["32"]), 1.0)], 0, Skips("test"))
    assert (mix.epoch_cuts, round(mix.epoch_seconds, 2)) == (32, 77.52)
    train = _config(micro_batch=8, num_buckets=10).train
    assert bucket_count(train, mix) == 2  # 32 cuts hold 2 buckets of 2 batches of 8
    sampler = make_sampler(mix, train)
    assert isinstance(sampler, DynamicBucketingSampler)
    sizes = [len(batch) for _, batch in zip(range(16), sampler)]
    assert sizes == [8] * 16, sizes
    # what 10 buckets over the same 32-cut buffer gave: short batches
    ten = DynamicBucketingSampler(mix.stream, max_cuts=8, num_buckets=10, shuffle=True, seed=0, buffer_size=32,
                                  num_cuts_for_bins_estimate=32)
    assert min(len(batch) for _, batch in zip(range(16), ten)) < 8

    # seconds per batch: 6 s of 2.4 s cuts is 2.5 cuts per batch -> 32 // 5 = 6 buckets
    assert bucket_count(_config(max_duration=6.0, num_buckets=10).train, mix) == 6
    assert bucket_count(_config(max_duration=6.0, num_buckets=10).train, Mix(None, 20000, 48000.0)) == 10
    assert bucket_count(_config(micro_batch=8).train, Mix(None, 15, 36.0)) == 1
    single = make_sampler(mix, _config(micro_batch=2, num_buckets=1).train)
    assert isinstance(single, DynamicCutSampler)
    assert [len(batch) for _, batch in zip(range(5), single)] == [2] * 5


def test_checkpoints_are_mergeable_and_decodable_adapters(base_dir, data, tmp_path):
    """Every checkpoint holds a complete adapter directory: `ilt merge` and
    `ilt decode --adapter` take it as they take best/."""
    import torch

    from ilt.asr.decode import decode_files
    from ilt.core.registry import create
    from ilt.models.adapter import load_adapter, resolve_adapter_dir
    from ilt.training.lora import merge_adapter

    out = tmp_path / "focus"
    train_round(_config(max_steps=3, save_every=1), base_dir, out, train_cuts=[(data["train"], 1.0)])
    assert [s for s, _ in list_checkpoints(out)] == [2, 3]
    step2 = out / "checkpoints" / "step-2"
    adapter = resolve_adapter_dir(step2)
    assert adapter == step2 / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "round.yaml", "manifests.json",
            "score.json"} <= {p.name for p in adapter.iterdir()}
    assert json.loads((adapter / "score.json").read_text())["step"] == 2
    assert (adapter / "round.yaml").read_text() == (out / "round.yaml").read_text()

    merged = merge_adapter(base_dir, step2, tmp_path / "M1-step2")
    assert json.loads((merged / "lineage.json").read_text())["adapter"]["step"] == 2
    features = {"input_features": torch.randn(1, 80, 200, generator=torch.Generator().manual_seed(0)),
                "decoder_input_ids": torch.tensor([[50258, 50259, 50360, 50364, 23748]])}
    with torch.no_grad():
        unmerged = load_adapter(create("backbone", "whisper", base_dir), step2).eval()(**features).logits
        full = create("backbone", "whisper", merged).model.eval()(**features).logits
        final = load_adapter(create("backbone", "whisper", base_dir), out / "final").eval()(**features).logits
    torch.testing.assert_close(full, unmerged, atol=1e-5, rtol=1e-5)
    assert (final - unmerged).abs().max() > 1e-4  # step 2 is not the final adapter

    hyps_adapter = decode_files(base_dir, data["dev"], tmp_path / "dec-adapter", FAST_DECODE, adapter=step2,
                                progress=False)
    hyps_merged = decode_files(merged, data["dev"], tmp_path / "dec-merged", FAST_DECODE, progress=False)
    assert [r["text"] for r in hyps_adapter] == [r["text"] for r in hyps_merged]
    with pytest.raises(IltInputError, match="not an adapter directory"):
        merge_adapter(base_dir, out / "checkpoints", tmp_path / "nope")


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state with its mixed precision: a
    bf16 run after fp32 runs in the same (test) process needs a fresh one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_frozen_base_loads_in_the_rounds_precision(base_dir, data, tmp_path, fresh_accelerate_state):
    """bf16 rounds load the frozen base in bf16 and keep the LoRA in fp32; the
    merge of such an adapter is the fp32 W + (alpha/r) B A."""
    import torch
    from safetensors.torch import load_file

    from ilt.training.loop import load_for_training
    from ilt.training.lora import merge_adapter

    config = _config(max_steps=1, precision="bf16")
    for mixed, dtype in (("bf16", torch.bfloat16), ("no", torch.float32)):
        _, model = load_for_training(config, base_dir, mixed)
        frozen = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
        lora = {(p.dtype, p.requires_grad) for n, p in model.named_parameters() if "lora_" in n}
        assert frozen == {dtype} and lora == {(torch.float32, True)}, (mixed, frozen, lora)

    out = tmp_path / "bf16"
    train_round(config, base_dir, out, train_cuts=[(data["train"], 1.0)], force_precision=True)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["precision"] == "bf16" and math.isfinite(log[1]["loss"])
    lora = load_file(out / "best" / "adapter_model.safetensors")
    assert {t.dtype for t in lora.values()} == {torch.float32}

    merged = load_file(merge_adapter(base_dir, out / "best", tmp_path / "M1") / "model.safetensors")
    base = load_file(base_dir / "model.safetensors")
    key = "model.encoder.layers.0.self_attn.q_proj"
    a = lora[f"base_model.model.{key}.lora_A.weight"]
    b = lora[f"base_model.model.{key}.lora_B.weight"]
    expected = base[f"{key}.weight"] + (config.lora.lora_alpha / config.lora.r) * (b @ a)
    assert (b @ a).abs().max() > 0  # one bf16 step moved the LoRA
    torch.testing.assert_close(merged[f"{key}.weight"], expected, atol=1e-6, rtol=0)


def test_ilt_train_runs_with_a_broken_third_party_plugin(base_dir, data, tmp_path, broken_plugin_env):
    """A plugin that fails to import is reported once; `ilt train` with
    built-in components (whisper, ce) still trains and writes its adapter."""
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "focus.yaml"
    config.write_text(dump_yaml(_config(max_steps=1)))
    ilt = Path(sys.executable).parent / "ilt"
    proc = subprocess.run([str(ilt), "train", "--config", str(config), "--model", str(base_dir),
                           "--train", str(data["train"]), "--out", str(tmp_path / "out")],
                          env=broken_plugin_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("plugin skipped: package 'ilt-broken-plugin'") == 1
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "best" / "adapter_model.safetensors").is_file()
    assert "1 steps in" in proc.stdout


def test_loss_options_from_the_round_yaml_reach_the_loss(base_dir, data, tmp_path, extra_losses):
    received = []

    def scaled(factor: float = 1.0):
        received.append(factor)
        return lambda backbone, model, batch: factor * backbone.loss(model, batch)

    extra_losses("scaled", scaled)
    config = from_dict(RoundConfig, yaml.safe_load(
        "name: focus\nlora: {r: 4}\ntask: {loss: {name: scaled, factor: 2.5}}\n"
        "train: {lr: 0.001, micro_batch: 2, precision: fp32, max_steps: 1}\n"), "round.yaml")
    out = tmp_path / "scaled"
    train_round(config, base_dir, out, train_cuts=[(data["train"], 1.0)])
    assert received == [2.5]
    assert yaml.safe_load((out / "round.yaml").read_text())["task"]["loss"] == {"name": "scaled", "factor": 2.5}
    assert yaml.safe_load((out / "best" / "round.yaml").read_text())["task"]["loss"]["factor"] == 2.5


def test_checkpoint_state_round_trips_types_without_pickle():
    import random

    import numpy as np
    import torch

    from ilt.training.checkpoint import decode_state, encode_state, rng_state

    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3, dtype=torch.bfloat16)}},
             "param_groups": [{"betas": (0.9, 0.999), "params": [0], "lr": float("nan")}],
             "__odd": 1, "rng": rng_state()}
    tensors: dict = {}
    doc = json.loads(json.dumps(encode_state(state, tensors)))
    back = decode_state(doc, tensors)
    assert set(back["state"]) == {0} and back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"]) and back["__odd"] == 1
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    assert back["rng"]["numpy"][1].dtype == np.uint32
    with pytest.raises(TypeError, match="without pickle"):
        encode_state({"x": object()}, {})
