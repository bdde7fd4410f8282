"""Fast unit tests of the pure logic behind train selection, merge, the data mix and decoding.

Written for mutation testing (docs/reliability.md, "Mutation testing"): each test runs in well
under a second, loads no model (tiny tensors and a two-Linear module at most) and pins exact
behaviour: which dev evaluation becomes ``best/``, the history-merge weights and average, a
LoRA merge equal to ``W + (alpha/r) B A``, the mix's filters and weights, per-row token budgets,
the stop rules and the decoding record helpers.
"""

import io
import json
import logging
import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ilt.training.evaluate
import ilt.training.loop as train_mod
from ilt.asr.decode import (
    Decoder,
    DecodeStats,
    _accent,
    _batches,
    _supervision,
    compression_ratio,
    cut_language,
    join_chunks,
    split_evenly,
)
from ilt.config import DataSource, DecodeConfig, LoraSection
from ilt.core.runtime import Skips
from ilt.data import mix as mix_mod
from ilt.errors import IltInputError
from ilt.models.base import stored_dtype
from ilt.models.generation import MAX_LOOP_PERIOD, StopRules, looping_rows, token_budget
from ilt.training.checkpoint import TrainState
from ilt.training.lora import (
    WEIGHT_SUM_TOLERANCE,
    _check_history,
    _check_inputs,
    attach_lora,
    check_weights,
    lora_config,
    weighted_average,
)

# =========================================================================== train selection


class _Acc:
    """The part of an ``accelerate.Accelerator`` that ``_Run.evaluate``/``save_final`` use."""

    def __init__(self, main=True):
        self.is_main_process = main
        self.num_processes, self.process_index = 1, 0
        self.distributed_type = "NO"  # accelerate's DistributedType.NO compares equal to its value
        self.state = SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=None)
        self.device = torch.device("cpu")
        self.logged, self.waits = [], 0

    def unwrap_model(self, model):
        return model

    def log(self, values, step):
        self.logged.append((step, values))

    def wait_for_everyone(self):
        self.waits += 1


class _Model:
    def __init__(self):
        self.modes = []

    def eval(self):
        self.modes.append("eval")

    def train(self):
        self.modes.append("train")

    def modules(self):  # nothing sharded: no FSDP module to gather for decoding
        return iter(())


def _score(step, value, *, loss=1.5, overall=0.25):
    return {"step": step, "value": value, "dev_loss": loss, "overall": {"error_rate": overall},
            "rows": [{"group": "en", "error_rate": 0.2}, {"group": "ja", "error_rate": 0.3}]}


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A ``_Run`` without a model: evaluation returns queued scores, saving adapters is recorded."""
    saved, calls = [], []
    monkeypatch.setattr(train_mod, "save_adapter",
                        lambda model, dst, config, manifests, score, state_dict=None: saved.append((dst, dict(score))))
    queue = {}

    def fake_evaluate(backbone, model, loss_fn, dev, decode_config, *, metric, micro_batch, device, step,
                      collective=None):
        calls.append({"metric": metric, "micro_batch": micro_batch, "device": device, "step": step,
                      "backbone": backbone, "loss_fn": loss_fn, "dev": dev, "decode": decode_config,
                      "mode": model.modes[-1]})
        torch.rand(3)  # decoding may draw from the RNG
        if isinstance(queue[step], Exception):
            raise queue[step]
        return _score(step, queue[step])

    monkeypatch.setattr(ilt.training.evaluate, "evaluate", fake_evaluate)
    r = object.__new__(train_mod._Run)
    r.accelerator, r.state, r.model = _Acc(), TrainState(None), _Model()
    r.config = SimpleNamespace(select=SimpleNamespace(metric="wer", patience=None, min_delta=0.0))
    r.train = SimpleNamespace(micro_batch=3)
    r.backbone, r.loss_fn, r.dev, r.decode_config = "BB", "LOSS", "DEV", "DECODE"
    r.out_dir, r.manifests, r.log_file = tmp_path, ["m"], io.StringIO()
    r.saved, r.calls, r.queue = saved, calls, queue
    return r


def test_best_is_lowest_metric_and_ties_keep_the_earlier_step(run):
    values = {1: 0.5, 2: 0.3, 3: 0.3, 4: 0.4, 5: None, 6: 0.1, 7: 0.1000001}
    run.queue.update(values)
    for step in values:
        run.evaluate(step)
    assert [(d.name, s["step"]) for d, s in run.saved] == [("best", 1), ("best", 2), ("best", 6)]
    assert all(d == run.out_dir / "best" for d, _ in run.saved)
    assert run.state.best_metric == 0.1 and run.state.best_step == 6
    assert run.state.best_score == _score(6, 0.1)
    assert run.state.last_eval == _score(7, 0.1000001)
    assert run.accelerator.waits == 7


def test_patience_counts_evaluations_without_a_new_best_by_min_delta(run):
    """select.patience 2, min_delta 0.05: 0.5 (best), 0.47 (a new best, but by less than 0.05: stale 1),
    0.40 (resets), 0.38 (stale 1), None (no score: stale 2, stop). The best adapter is still the
    lowest value; a patience of 3 would not stop there."""
    run.config.select.patience, run.config.select.min_delta = 2, 0.05
    values = {1: 0.5, 2: 0.47, 3: 0.40, 4: 0.38, 5: None}
    run.queue.update(values)
    stale, stopped = [], []
    for step in values:
        run.evaluate(step)
        stale.append(run.state.stale_evals)
        stopped.append(run.state.stopped_early)
    assert stale == [0, 1, 0, 1, 2]
    assert stopped == [None, None, None, None, 5]
    assert [s["step"] for _, s in run.saved] == [1, 2, 3, 4] and run.state.best_metric == 0.38
    records = [json.loads(line) for line in run.log_file.getvalue().splitlines()]
    assert [r.get("stopped_early", False) for r in records] == [False] * 4 + [True]
    assert [r["best"] for r in records] == [True, True, True, True, False]


def test_without_patience_nothing_stops(run):
    run.queue.update({1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8})
    for step in range(1, 5):
        run.evaluate(step)
    assert run.state.stale_evals == 3 and run.state.stopped_early is None


def test_no_score_value_never_becomes_best(run):
    run.queue.update({1: None, 2: None})
    run.evaluate(1)
    run.evaluate(2)
    assert run.saved == [] and run.state.best_metric is None and run.state.best_step is None
    run.queue[3] = 0.0  # a zero error rate is a score, and the best one
    run.evaluate(3)
    assert run.state.best_metric == 0.0 and run.state.best_step == 3 and len(run.saved) == 1


def test_evaluate_call_log_record_and_tracker_values(run):
    run.queue[4] = 0.2
    run.evaluate(4)
    assert run.calls == [{"metric": "wer", "micro_batch": 3, "device": torch.device("cpu"), "step": 4,
                          "backbone": "BB", "loss_fn": "LOSS", "dev": "DEV", "decode": "DECODE",
                          "mode": "eval"}]
    assert run.model.modes == ["eval", "train"]
    record = json.loads(run.log_file.getvalue())
    assert record == {"event": "eval", "step": 4, "dev_loss": 1.5, "dev_error_rate": 0.25,
                      "per_language": {"en": 0.2, "ja": 0.3}, "wer": 0.2, "best": True, "stale_evals": 0}
    assert run.accelerator.logged == [(4, {"dev/loss": 1.5, "dev/error_rate/Overall": 0.25,
                                           "dev/error_rate/en": 0.2, "dev/error_rate/ja": 0.3})]


def test_evaluate_drops_none_tracker_values(run, monkeypatch):
    monkeypatch.setattr(ilt.training.evaluate, "evaluate", lambda *a, step, **k: {**_score(step, 0.5, loss=None)})
    run.evaluate(2)
    assert run.accelerator.logged == [(2, {"dev/error_rate/Overall": 0.25, "dev/error_rate/en": 0.2,
                                           "dev/error_rate/ja": 0.3})]


def test_evaluate_keeps_the_training_rng_and_restores_train_mode(run):
    run.queue[1] = 0.5
    torch.manual_seed(7)
    run.evaluate(1)
    after = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(4))
    run.queue[2] = RuntimeError("decoding failed")
    with pytest.raises(RuntimeError):
        run.evaluate(2)
    assert run.model.modes == ["eval", "train", "eval", "train"]


class _SecondProcess:
    """Process 1 of 2: it evaluates its share, and the best-adapter decision is the main process's."""

    world, rank = 2, 1

    def __init__(self, accelerator=None, main_says=True):
        self.main_says = main_says

    def broadcast(self, obj):  # (new best, improved beyond min_delta): what the main process decided
        return (self.main_says, self.main_says)


@pytest.mark.parametrize("main_says", [True, False])
def test_another_process_evaluates_and_follows_the_main_process(run, monkeypatch, main_says):
    """Every process evaluates its shard; whether the adapter is kept is what
    the main process broadcasts, never this process's own value; only the main
    process writes."""
    monkeypatch.setattr(ilt.training.evaluate, "Collective", lambda acc: _SecondProcess(acc, main_says))
    run.accelerator.is_main_process = False
    run.queue[1] = 0.9  # this process's (broadcast) score: its own value never decides
    run.evaluate(1)
    assert len(run.calls) == 1 and run.accelerator.waits == 1
    assert run.saved == []  # the writing is the main process's
    assert (run.state.best_step == 1) is main_says
    assert run.state.stale_evals == (0 if main_says else 1)


def test_save_final_without_a_best_saves_the_final_as_best(run):
    run.state.step, run.dev = 10, None
    assert run.save_final() == run.out_dir / "final"
    assert run.saved == [(run.out_dir / "final", {"step": 10}),
                         (run.out_dir / "best", {"step": 10, "note": "no dev set: the final adapter"})]
    assert run.accelerator.waits == 1


def test_save_final_with_dev_but_no_score_and_last_eval(run):
    run.state.step, run.state.last_eval = 10, _score(10, None)
    run.save_final()
    assert run.saved == [(run.out_dir / "final", _score(10, None)),
                         (run.out_dir / "best", {**_score(10, None),
                                                 "note": "no dev evaluation gave a wer: the final adapter"})]


def test_save_final_keeps_a_chosen_best_and_ignores_a_stale_eval(run):
    run.state.step, run.state.best_step, run.state.last_eval = 12, 8, _score(8, 0.1)
    run.save_final()
    assert run.saved == [(run.out_dir / "final", {"step": 12})]
    run.saved.clear()
    run.accelerator.is_main_process = False
    run.save_final()
    assert run.saved == [] and run.accelerator.waits == 2


def test_best_fields_survive_a_checkpoint(run):
    class Sampler:
        def state_dict(self):
            return {"diagnostics": {"current_epoch": 0, "stats_per_epoch": {0: {"kept_batches": 99}}}}

        def load_state_dict(self, sd):
            self.loaded = sd

    state = TrainState(Sampler())
    state.best_metric, state.best_step, state.best_score, state.micro_batches = 0.2, 5, {"value": 0.2}, 7
    sd = state.state_dict()
    assert sd["sampler"]["diagnostics"]["stats_per_epoch"][0] == {"kept_batches": 7, "discarded_batches": 0}
    other = TrainState(Sampler())
    other.load_state_dict(sd)
    assert (other.best_metric, other.best_step, other.best_score) == (0.2, 5, {"value": 0.2})
    assert other.sampler.loaded == sd["sampler"] and "sampler" in sd


# =========================================================================== merge


def test_check_weights():
    assert check_weights(0, None) == [1.0]
    assert check_weights(2, (0.5, 0.25, 0.25)) == [0.5, 0.25, 0.25]
    assert check_weights(1, [1, 0]) == [1.0, 0.0] and isinstance(check_weights(1, [1, 0])[0], float)
    assert check_weights(1, [0.7, 0.3 + WEIGHT_SUM_TOLERANCE / 2]) == [0.7, 0.3 + WEIGHT_SUM_TOLERANCE / 2]
    with pytest.raises(ValueError, match=r"^a history merge needs 3 weights \(the new model first, then "
                                         r"2 earlier model\(s\)\); none given$"):
        check_weights(2, None)
    with pytest.raises(ValueError, match=r"^history merge: 1 weight\(s\) for 2 model\(s\) \(the new model "
                                         r"first, then 1 earlier model\(s\)\); give one weight per model$"):
        check_weights(1, [1.0])
    for bad in ([1.5, -0.5], [math.nan, 1.0], [math.inf, 0.0]):
        with pytest.raises(ValueError, match=r"^history merge: weights must be finite and non-negative"):
            check_weights(1, bad)
    with pytest.raises(ValueError, match=r"^history merge: weights must sum to 1, got \[0.5, 0.4\] "
                                         r"\(sum 0.9\)$"):
        check_weights(1, [0.5, 0.4])
    with pytest.raises(ValueError, match="sum to 1"):
        check_weights(1, [0.7, 0.3 + 2 * WEIGHT_SUM_TOLERANCE])
    with pytest.raises(ValueError, match="sum to 1"):
        check_weights(1, [0.7, 0.3 - 2 * WEIGHT_SUM_TOLERANCE])


def test_weighted_average_exact_in_fp64_and_cast_back():
    own = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "b": torch.tensor([0.1], dtype=torch.float32),
           "ids": torch.tensor([1, 2])}
    o1 = {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16), "b": torch.tensor([0.7], dtype=torch.float32),
          "ids": torch.tensor([1, 2])}
    o2 = {"w": torch.tensor([5.0, 8.0], dtype=torch.bfloat16), "b": torch.tensor([1.3], dtype=torch.float32),
          "ids": torch.tensor([1, 2])}
    out = weighted_average(own, [o1, o2], [0.5, 0.25, 0.25], ["m1", "m2"])
    assert set(out) == {"w", "b"}
    assert out["w"].dtype == torch.bfloat16 and out["w"].tolist() == [2.5, 4.0]
    expected_b = torch.tensor([0.1 * 0.5 + 0.7 * 0.25 + 1.3 * 0.25], dtype=torch.float64).float()
    assert out["b"].dtype == torch.float32 and torch.equal(out["b"], expected_b)
    assert torch.equal(own["w"], torch.tensor([1.0, 2.0], dtype=torch.bfloat16))  # inputs untouched
    assert weighted_average(own, [], [1.0], [])["w"].tolist() == [1.0, 2.0]


def test_weighted_average_refuses_other_architectures():
    own = {"a": torch.zeros(2), "b": torch.zeros(2), "n": torch.tensor([3])}
    with pytest.raises(IltInputError, match=r"^history merge: M2 has a different architecture: missing "
                                            r"\['b'\], unexpected \['c'\]$"):
        weighted_average(own, [{"a": torch.zeros(2), "c": torch.zeros(2), "n": torch.tensor([3])}], [0.5, 0.5],
                         ["M2"])
    with pytest.raises(IltInputError, match=r"missing \[\], unexpected \['c'\]"):
        weighted_average(own, [{**own, "c": torch.zeros(1)}], [0.5, 0.5], ["M2"])
    with pytest.raises(IltInputError, match=r"^history merge: M2: b has shape \(3,\), the new model \(2,\)$"):
        weighted_average(own, [{**own, "b": torch.zeros(3)}], [0.5, 0.5], ["M2"])
    with pytest.raises(IltInputError, match=r"^history merge: M2: non-float tensor n differs$"):
        weighted_average(own, [{**own, "n": torch.tensor([4])}], [0.5, 0.5], ["M2"])
    many = {k: torch.zeros(1) for k in "abcde"}
    with pytest.raises(IltInputError, match=r"missing \['a', 'b', 'c'\], unexpected \[\]$"):
        weighted_average(many, [{"e": torch.zeros(1)}], [0.5, 0.5], ["M2"])


def test_stored_dtype(tmp_path):
    def dtype_of(config):
        (tmp_path / "config.json").write_text(json.dumps(config))
        return stored_dtype(tmp_path)

    assert stored_dtype(tmp_path) is None  # no config.json
    assert dtype_of({"dtype": "bfloat16"}) == torch.bfloat16
    assert dtype_of({"torch_dtype": "float16"}) == torch.float16
    assert dtype_of({"dtype": "float16", "torch_dtype": "float32"}) == torch.float16
    assert dtype_of({"dtype": None, "torch_dtype": "bfloat16"}) == torch.bfloat16
    assert dtype_of({"dtype": "int8"}) is None
    assert dtype_of({"dtype": "Tensor"}) is None  # a torch attribute that is not a dtype
    assert dtype_of({"dtype": "nonsense"}) is None
    assert dtype_of({}) is None
    assert dtype_of(["float16"]) is None


def test_check_inputs(tmp_path):
    model, adapter, out = tmp_path / "model", tmp_path / "adapter", tmp_path / "out"
    model.mkdir()
    adapter.mkdir()
    _check_inputs(model, adapter, out, [], False)
    with pytest.raises(IltInputError, match=r"h: model directory not found$"):
        _check_inputs(model, adapter, out, [tmp_path / "h"], False)
    with pytest.raises(IltInputError, match=r"model2: model directory not found$"):
        _check_inputs(tmp_path / "model2", adapter, out, [], False)
    for same in (model, adapter):
        with pytest.raises(IltInputError, match="the output must be a new directory, not an input"):
            _check_inputs(model, adapter, same, [], True)
    (tmp_path / "h").mkdir()
    with pytest.raises(IltInputError, match="not an input"):
        _check_inputs(model, adapter, tmp_path / "model" / ".." / "h", [tmp_path / "h"], True)
    out.mkdir()
    _check_inputs(model, adapter, out, [], False)  # an empty out_dir is fine
    (out / "f").write_text("x")
    with pytest.raises(IltInputError, match=r"out: exists and is not empty; choose another --out or overwrite it"):
        _check_inputs(model, adapter, out, [], False)
    _check_inputs(model, adapter, out, [], True)


def test_check_history(tmp_path):
    base = {"sha256": "aaa"}
    _check_history(tmp_path / "m", base, [tmp_path / "h1", tmp_path / "h2"], [{"sha256": "b"}, {"sha256": "c"}])
    with pytest.raises(IltInputError, match=r"^--history .*h2: this is the base model M_\(t-1\) itself"):
        _check_history(tmp_path / "m", base, [tmp_path / "h1", tmp_path / "h2"], [{"sha256": "b"}, {"sha256": "aaa"}])
    with pytest.raises(IltInputError, match="the history starts at M_\\(t-2\\)"):
        _check_history(tmp_path / "m", base, [tmp_path / "x" / ".." / "m"], [{"sha256": "z"}])
    # no hash on either side: only the path decides
    _check_history(tmp_path / "m", {"sha256": None}, [tmp_path / "h"], [{"sha256": None}])


class _TinyBackbone:
    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential()
        self.model.add_module("q", torch.nn.Linear(4, 3))
        self.model.add_module("k", torch.nn.Linear(3, 2))
        self.scopes = []

    def target_modules(self, scope):
        self.scopes.append(scope)
        return ("q",) if scope == "attention" else tuple(scope)


def test_lora_config_and_attach(caplog):
    backbone = _TinyBackbone()
    lora = LoraSection(r=2, lora_alpha=6.0, lora_dropout=0.0, target_modules="attention")
    config = lora_config(backbone, lora)
    assert backbone.scopes == ["attention"]
    assert (config.r, config.lora_alpha, config.lora_dropout, set(config.target_modules)) == (2, 6.0, 0.0, {"q"})
    with caplog.at_level(logging.INFO, logger="ilt"):
        model = attach_lora(backbone, lora)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "base_model.model.q.lora_A.default.weight", "base_model.model.q.lora_B.default.weight"]
    assert "LoRA r=2 on q: 14 trainable of 37 parameters (37.838%)" in caplog.text


def test_lora_merge_is_w_plus_scaled_ba():
    backbone = _TinyBackbone()
    w0 = backbone.model.q.weight.detach().clone()
    b0, k0 = backbone.model.q.bias.detach().clone(), backbone.model.k.weight.detach().clone()
    model = attach_lora(backbone, LoraSection(r=2, lora_alpha=6.0, lora_dropout=0.0, target_modules="attention"))
    a, b = model.base_model.model.q.lora_A["default"].weight, model.base_model.model.q.lora_B["default"].weight
    with torch.no_grad():
        b.copy_(torch.arange(6, dtype=torch.float32).reshape(3, 2) / 8)
    x = torch.randn(5, 4)
    before = model(x)
    expected = w0 + (6.0 / 2) * (b.detach() @ a.detach())
    merged = model.merge_and_unload(safe_merge=True)
    assert isinstance(merged.q, torch.nn.Linear)
    torch.testing.assert_close(merged.q.weight, expected, rtol=0, atol=1e-6)
    assert torch.equal(merged.q.bias, b0) and torch.equal(merged.k.weight, k0)
    torch.testing.assert_close(merged(x), before, rtol=0, atol=1e-5)


# =========================================================================== data mix


def _cut(cid, duration=2.0, text="hello", language="en", n_sups=1):
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment

    rec = Recording(id=f"rec-{cid}", sources=[AudioSource(type="file", channels=[0], source="/none.wav")],
                    sampling_rate=16000, num_samples=int(duration * 16000), duration=duration)
    sups = [SupervisionSegment(id=f"{cid}-{k}", recording_id=rec.id, start=0, duration=duration, text=text,
                               language=language) for k in range(n_sups)]
    return MonoCut(id=cid, start=0, duration=duration, channel=0, recording=rec, supervisions=sups)


def _manifest(path, cuts):
    from lhotse import CutSet

    CutSet.from_cuts(cuts).to_file(path)
    return str(path)


def test_has_text_keep_and_languages():
    assert mix_mod.has_text(_cut("a"))
    assert not mix_mod.has_text(_cut("a", text="  \n"))
    assert not mix_mod.has_text(_cut("a", text=None))
    assert not mix_mod.has_text(_cut("a", n_sups=0))
    assert mix_mod._in_languages(_cut("a", language="EN"), frozenset({"en"}))
    assert not mix_mod._in_languages(_cut("a", language="fr"), frozenset({"en"}))
    assert not mix_mod._in_languages(_cut("a", language=None), frozenset({"en"}))
    assert mix_mod._in_languages(_cut("a", language=None), frozenset({""}))
    assert mix_mod._in_languages(_cut("a", language=None), None)
    assert mix_mod._keep(_cut("a"), frozenset({"en"}))
    assert not mix_mod._keep(_cut("a", n_sups=2), None)
    assert not mix_mod._keep(_cut("a", text=""), None)
    assert not mix_mod._keep(_cut("a", language="fr"), frozenset({"en"}))


@pytest.mark.parametrize("sidecar", [False, True])  # one counting pass, or the counts save_manifest wrote
def test_open_source_filters_counts_and_skips(tmp_path, caplog, sidecar):
    from lhotse import CutSet

    from ilt.data.manifests import save_manifest, stats_path

    cuts = [_cut("e1", 1.5), _cut("e2", 2.25, language="EN"), _cut("blank", 9.0, text=" "),
            _cut("two", 9.0, n_sups=2), _cut("f1", 9.0, language="fr"), _cut("f2", 9.0, language="de")]
    path = (str(save_manifest(CutSet.from_cuts(cuts), tmp_path / "a.jsonl.gz")) if sidecar
            else _manifest(tmp_path / "a.jsonl.gz", cuts))
    assert stats_path(path).is_file() == sidecar
    skips = Skips("train")
    with caplog.at_level(logging.INFO, logger="ilt"):
        cuts, n, seconds = mix_mod.open_source(DataSource(cuts=path, languages=["En"]), skips)
    assert (n, seconds) == (2, 3.75)
    assert [c.id for c in cuts] == ["e1", "e2"]
    assert skips.items == {"empty transcript": ["blank"], "several supervisions": ["two"]}
    assert f"train source {path}: 2 cut(s) in other languages than ['en'] left out" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ilt"):
        cuts, n, seconds = mix_mod.open_source(DataSource(cuts=path), Skips("train"))
    assert (n, seconds) == (4, 21.75) and [c.id for c in cuts] == ["e1", "e2", "f1", "f2"]
    assert "other languages" not in caplog.text


def test_open_source_errors(tmp_path):
    with pytest.raises(IltInputError, match=r"nope.jsonl.gz: training cut manifest not found$"):
        mix_mod.open_source(DataSource(cuts=str(tmp_path / "nope.jsonl.gz")), Skips("t"))
    dup = _manifest(tmp_path / "d.jsonl.gz", [_cut("x"), _cut("y"), _cut("x")])
    with pytest.raises(IltInputError, match=r"d.jsonl.gz: cut ID 'x' appears more than once; IDs must be unique"):
        mix_mod.open_source(DataSource(cuts=dup), Skips("t"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(IltInputError, match=r"bad.jsonl: cannot read cut manifest: JSONDecodeError: "):
        mix_mod.open_source(DataSource(cuts=str(bad)), Skips("t"))
    fr = _manifest(tmp_path / "fr.jsonl.gz", [_cut("f", language="fr"), _cut("g", text="")])
    with pytest.raises(IltInputError, match=r"fr.jsonl.gz: training source has no cuts with a transcript in "
                                            r"languages \['de', 'en'\]$"):
        mix_mod.open_source(DataSource(cuts=fr, languages=["en", "DE"]), Skips("t"))
    with pytest.raises(IltInputError, match=r"training source has no cuts with a transcript$"):
        mix_mod.open_source(DataSource(cuts=_manifest(tmp_path / "e.jsonl.gz", [_cut("g", text="")])), Skips("t"))


def test_mux_weights():
    share = [DataSource(cuts="a", weight=2.0), DataSource(cuts="b", weight=0.5)]
    assert mix_mod.mux_weights(share, [10, 3]) == [2.0, 0.5]
    hours = [DataSource(cuts="a", weight=2.0, weight_by="hours"), DataSource(cuts="b", weight=0.5, weight_by="hours")]
    assert mix_mod.mux_weights(hours, [10, 3]) == [20.0, 1.5]


def _shares(stream, n):
    counts = {}
    for i, cut in enumerate(stream):
        if i == n:
            break
        counts[cut.id[0]] = counts.get(cut.id[0], 0) + 1
    return {k: v / n for k, v in counts.items()}


def test_training_stream_draws_by_weight(tmp_path):
    a = _manifest(tmp_path / "a.jsonl.gz", [_cut(f"a{i}", 1.0) for i in range(2)])
    b = _manifest(tmp_path / "b.jsonl.gz", [_cut(f"b{i}", 3.0) for i in range(4)])
    mix = mix_mod.training_stream([DataSource(cuts=a, weight=3.0), DataSource(cuts=b, weight=1.0)], 0, Skips("t"))
    assert (mix.epoch_cuts, mix.epoch_seconds) == (6, 14.0)
    shares = _shares(mix.stream, 2000)
    assert abs(shares["a"] - 0.75) < 0.03 and abs(shares["b"] - 0.25) < 0.03
    # by hours with weight 1 each: every cut equally likely, so b (4 of 6 cuts) is 2/3 of the stream
    mix = mix_mod.training_stream([DataSource(cuts=a, weight_by="hours"), DataSource(cuts=b, weight_by="hours")],
                                  0, Skips("t"))
    shares = _shares(mix.stream, 2000)
    assert abs(shares["b"] - 2 / 3) < 0.03
    # the seed decides the order
    again = mix_mod.training_stream([DataSource(cuts=a, weight=3.0), DataSource(cuts=b)], 0, Skips("t"))
    other = mix_mod.training_stream([DataSource(cuts=a, weight=3.0), DataSource(cuts=b)], 1, Skips("t"))
    first = [c.id for _, c in zip(range(40), again.stream)]
    assert first == [c.id for _, c in zip(range(40), mix_mod.training_stream(
        [DataSource(cuts=a, weight=3.0), DataSource(cuts=b)], 0, Skips("t")).stream)]
    assert first != [c.id for _, c in zip(range(40), other.stream)]


def test_training_stream_single_source_and_filters(tmp_path, caplog):
    a = _manifest(tmp_path / "a.jsonl.gz", [_cut("x1", 1.0), _cut("x2", 2.0, language="fr"), _cut("x3", 4.0)])
    with caplog.at_level(logging.INFO, logger="ilt"):
        mix = mix_mod.training_stream([DataSource(cuts=a, languages=["en"], weight_by="hours", weight=2.0)], 0,
                                      Skips("t"))
    assert (mix.epoch_cuts, mix.epoch_seconds) == (2, 5.0)
    assert [c.id for _, c in zip(range(6), mix.stream)] == ["x1", "x3"] * 3  # endless, in order, ids kept
    assert f"train source {a}: 2 cuts, 0.0 h, weight 2 by hours (cut weight 4)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ilt"):
        mix_mod.training_stream([DataSource(cuts=a, weight=0.5)], 0, Skips("t"))
    assert caplog.records[-1].getMessage() == f"train source {a}: 3 cuts, 0.0 h, weight 0.5"


def test_training_stream_refuses_zero_weights(tmp_path):
    with pytest.raises(IltInputError, match=r"^the data mix weights \[0.0, 0.0\] sum to zero: give at least one "
                                            r"source a weight$"):
        mix_mod.training_stream([DataSource(cuts="x", weight=0.0), DataSource(cuts="y", weight=0.0)], 0, Skips("t"))
    a = _manifest(tmp_path / "a.jsonl.gz", [_cut("a1")])
    mix = mix_mod.training_stream([DataSource(cuts=a, weight=0.0), DataSource(cuts=a, weight=1e-9)], 0, Skips("t"))
    assert mix.epoch_cuts == 2


def test_buffer_cuts_and_bucket_count():
    assert [mix_mod.buffer_cuts(n) for n in (0, 1, 500, 20000, 50000)] == [1, 1, 500, 20000, 20000]

    def buckets(cuts, seconds, max_duration=None, micro_batch=8, num_buckets=10):
        train = SimpleNamespace(max_duration=max_duration, micro_batch=micro_batch, num_buckets=num_buckets)
        return mix_mod.bucket_count(train, mix_mod.Mix(None, cuts, seconds))

    assert buckets(32, 64.0) == 2          # 32 // (2 * 8)
    assert buckets(31, 64.0) == 1
    assert buckets(1000, 0.0) == 10        # capped by num_buckets
    assert buckets(160, 0.0, num_buckets=12) == 10
    assert buckets(0, 0.0) == 1
    assert buckets(100, 400.0, max_duration=20.0) == 10    # 5 cuts a batch: 100 // 10
    assert buckets(100, 400.0, max_duration=16.0) == 10
    assert buckets(100, 400.0, max_duration=16.0, num_buckets=30) == 12  # 4 cuts a batch: 100 // 8
    assert buckets(100, 400.0, max_duration=2.0, num_buckets=80) == 50   # at least one cut a batch
    assert buckets(100, 0.0, max_duration=2.0, num_buckets=80) == 50     # no durations: one cut a batch
    assert buckets(0, 10.0, max_duration=5.0, num_buckets=80) == 1
    assert buckets(30000, 30000 * 4.0, max_duration=8.0, num_buckets=10000) == 5000  # the buffer: 20000 // 4


# =========================================================================== decoding: budgets and stop rules


def test_token_budget():
    assert token_budget(2.0, 6.0, 16, 448) == 28
    assert token_budget(2.01, 6.0, 16, 448) == 29       # ceil
    assert token_budget(100.0, 6.0, 16, 448) == 448     # cap
    assert token_budget(1.0, 3.0, 0, 3) == 3 and token_budget(1.0, 3.0, 0, 2) == 2
    assert token_budget(-5.0, 6.0, 4, 448) == 4         # negative durations count as 0
    assert token_budget(0.0, 6.0, 0, 448) == 1          # at least one token
    assert token_budget(1.0, 6.0, 0, 0) == 1
    assert token_budget(1.0, 2.5, 1.9, 10.9) == 4       # slack and cap are ints


def test_decode_config_token_budgets():
    config = DecodeConfig(tokens_per_second={"en": 4.0, "default": 10.0}, token_slack=2, max_new_tokens=40)
    assert config.token_budgets([1.0, 2.5, 10.0], "en") == [6, 12, 40]
    assert config.token_budgets([1.0], "ja") == [12] and config.token_budgets([1.0], None) == [12]
    config = DecodeConfig(tokens_per_second={"en": 4.0}, token_slack=2, max_new_tokens=40)
    assert config.token_budgets([1.0, 3.0], "fr") == [40, 40]
    assert config.token_budgets([1.0], "en") == [6]
    assert DecodeConfig(tokens_per_second={}, max_new_tokens=33).token_budgets([1.0], "en") == [33]


def test_looping_rows():
    t = torch.tensor
    rows = t([[1, 2, 7, 7, 7, 7],        # period 1, 4 times
              [1, 2, 3, 4, 5, 6],        # no loop
              [5, 6, 5, 6, 5, 6],        # period 2, 3 times
              [9, 7, 7, 7, 7, 7],
              [7, 7, 7, 7, 7, 1]])       # loop not at the end
    assert looping_rows(rows, 4).tolist() == [True, False, True, True, False]
    assert looping_rows(rows, 5).tolist() == [False, False, True, True, False]  # 5 equal tokens needed
    assert looping_rows(rows, 6).tolist() == [False, False, True, False, False]
    assert looping_rows(rows, 7).tolist() == [False] * 5                          # too short
    assert looping_rows(t([[3, 3, 3]]), 2).tolist() == [True]                       # 3 * period at least
    assert looping_rows(t([[4, 3, 3]]), 2).tolist() == [False]
    assert looping_rows(t([[1, 2, 1, 2, 1]]), 2).tolist() == [False]                # period 2 needs 6 tokens
    assert looping_rows(t([[1, 2, 3, 1, 2, 3, 1, 2, 3]]), 2).tolist() == [True]
    assert looping_rows(t([[1, 2, 3, 1, 2, 3, 1, 2, 4]]), 2).tolist() == [False]
    longest = list(range(MAX_LOOP_PERIOD)) * 3
    assert looping_rows(t([[99] + longest]), 2).tolist() == [True]
    too_long = list(range(MAX_LOOP_PERIOD + 1)) * 3
    assert looping_rows(t([too_long]), 2).tolist() == [False]
    assert looping_rows(t([[1], [2]]), 2).tolist() == [False, False]
    assert looping_rows(torch.zeros((2, 0), dtype=torch.long), 2).dtype == torch.bool


def test_stop_rules_budget_loop_and_counts():
    eos = 0
    rules = StopRules([3, 5], prompt_length=2, eos_id=eos, loop_tokens=3)
    prompt = [50, 51]
    ids = torch.tensor([prompt + [4, 5, 6],       # utterance 0: at its budget of 3
                        prompt + [8, 8, 8],       # utterance 1: loop
                        ])
    scores = torch.zeros(2, 10)
    out = rules(ids, scores)
    assert torch.equal(scores, torch.zeros(2, 10))  # the input is not modified
    expected = torch.full((2, 10), float("-inf"))
    expected[:, eos] = 0.0
    assert torch.equal(out, expected)
    assert rules.stopped == {"budget": 1, "loop": 1}
    assert rules.budgets == [3, 5] and rules.prompt_length == 2 and rules.eos_id == 0


def test_stop_rules_leave_running_rows_alone():
    rules = StopRules([4, 4], prompt_length=1, eos_id=2, loop_tokens=3)
    ids = torch.tensor([[9, 4, 5, 6], [9, 5, 5, 6]])
    scores = torch.randn(2, 6)
    assert rules(ids, scores) is scores and rules.stopped == {"budget": 0, "loop": 0}
    rules = StopRules([1], prompt_length=3, eos_id=2, loop_tokens=3)
    scores = torch.randn(1, 6)
    assert rules(torch.tensor([[9, 9, 9]]), scores) is scores  # no text token yet, budget 1 not reached


def test_stop_rules_beams_ended_rows_and_no_loop_stop():
    eos = 1
    rules = StopRules([2, 10], prompt_length=0, eos_id=eos, loop_tokens=None)
    # two beams per utterance: rows 0-1 are utterance 0 (budget 2), rows 2-3 utterance 1
    ids = torch.tensor([[3, 4], [eos, 0], [5, 5], [5, 5]])
    out = rules(ids, torch.zeros(4, 3))
    assert out[:2].tolist() == [[float("-inf"), 0.0, float("-inf")]] * 2
    assert out[2:].tolist() == [[0.0, 0.0, 0.0]] * 2  # 5 5 is no loop stop: switched off
    assert rules.stopped == {"budget": 1, "loop": 0}   # the row that already ended is not counted
    rules = StopRules([2, 10], prompt_length=0, eos_id=eos, loop_tokens=2)
    ids = torch.tensor([[3, 4, 4], [eos, 0, 0], [5, 5, 5], [eos, 5, 5]])
    out = rules(ids, torch.zeros(4, 3))
    assert torch.isinf(out[:, 0]).tolist() == [True, True, True, False]  # row 3 ends 1 5 5: no loop
    assert rules.stopped == {"budget": 1, "loop": 1}
    over = StopRules([2], prompt_length=0, eos_id=eos, loop_tokens=2)
    over(torch.tensor([[4, 4, 4]]), torch.zeros(1, 3))
    assert over.stopped == {"budget": 1, "loop": 0}  # a loop over its budget counts as a budget stop
    # a subset of the rows (Whisper's temperature fallback): every row gets the largest budget
    subset = StopRules([2, 4], prompt_length=0, eos_id=eos, loop_tokens=None)
    scores = torch.zeros(3, 3)
    assert subset(torch.full((3, 3), 7), scores) is scores and subset.stopped == {"budget": 0, "loop": 0}
    out = subset(torch.full((3, 4), 7), scores)
    assert torch.isinf(out[:, 0]).all() and subset.stopped == {"budget": 3, "loop": 0}


def test_stop_rules_empty_generation_and_accumulation():
    rules = StopRules([0], prompt_length=2, eos_id=0, loop_tokens=3)
    out = rules(torch.tensor([[7, 8]]), torch.zeros(1, 2))
    assert out.tolist() == [[0.0, float("-inf")]] and rules.stopped == {"budget": 1, "loop": 0}
    rules(torch.tensor([[7, 8, 5]]), torch.zeros(1, 2))
    assert rules.stopped == {"budget": 2, "loop": 0}


# =========================================================================== decoding: records


def test_compression_ratio():
    assert compression_ratio("") == 0.0
    text = "the the the the the the the the the the the the"
    assert compression_ratio(text) == len(text) / len(zlib.compress(text.encode()))
    assert compression_ratio("日本語") == 9 / len(zlib.compress("日本語".encode()))


def test_split_evenly():
    audio = np.arange(10, dtype=np.float32)
    parts = split_evenly(audio, 2, 2.0)  # 4-sample windows: 3 chunks
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [p.size for p in split_evenly(audio, 2, 2.5)] == [5, 5]
    assert split_evenly(audio, 2, 5.0)[0] is audio and len(split_evenly(audio, 2, 5.0)) == 1
    assert split_evenly(audio, 2, 0.0)[0] is audio and len(split_evenly(audio, 2, -1.0)) == 1
    assert len(split_evenly(audio, 4, 0.6)) == 5  # round(2.4) = 2 samples
    assert len(split_evenly(np.zeros(0), 2, 1.0)) == 1


def test_join_chunks():
    assert join_chunks([" hello ", "", "  ", "world"], "en") == "hello world"
    assert join_chunks([" 你好 ", "世界"], "zh") == "你好世界"
    assert join_chunks(["a", "b"], None) == "a b"
    assert join_chunks([], "en") == ""


def _dcut(cid, language="en", accent="American", sups=True, duration=1.0):
    sup = SimpleNamespace(language=language, custom={"accent": accent} if accent else None)
    return SimpleNamespace(id=cid, supervisions=[sup] if sups else [], duration=duration)


def _decoder(stats=None, **config):
    """A :class:`Decoder` over a backbone of nothing but its audio settings (no model)."""
    backbone = SimpleNamespace(sampling_rate=16000, max_input_seconds=30.0)
    decoder = Decoder(backbone, object(), DecodeConfig(**config))
    decoder.stats = stats if stats is not None else DecodeStats()
    return decoder


def test_cut_fields():
    assert _supervision(_dcut("a")).language == "en" and _supervision(_dcut("a", sups=False)) is None
    assert cut_language(_dcut("a")) == "en"
    assert cut_language(_dcut("a", language="")) is None and cut_language(_dcut("a", sups=False)) is None
    assert _accent(_dcut("a")) == "American"
    assert _accent(_dcut("a", accent=None)) is None and _accent(_dcut("a", sups=False)) is None


def test_records_join_chunks_and_scores():
    loaded = [(_dcut("c1"), [np.zeros(1), np.zeros(1)], 3.14159), (_dcut("c2", accent=None), [np.zeros(1)], 1.0),
              (_dcut("c3"), [np.zeros(1)], 0.5)]
    stats = DecodeStats(chunks=1, audio_seconds=1.0)
    records = _decoder(stats).records(loaded, [" a ", "b", "c", ""], "en",
                                      scores=[(-1.0, 2), (-4.0, 2), (-0.5, 1), (0, 0)])
    assert records == [
        {"id": "c1", "text": "a b", "language": "en", "accent": "American", "duration": 3.142, "num_chunks": 2,
         "score": -2.5, "score_tokens": 4},
        {"id": "c2", "text": "c", "language": "en", "accent": None, "duration": 1.0, "num_chunks": 1,
         "score": -0.5, "score_tokens": 1},
        {"id": "c3", "text": "", "language": "en", "accent": "American", "duration": 0.5, "num_chunks": 1,
         "score": None, "score_tokens": 0}]
    assert stats.chunks == 5 and stats.audio_seconds == 1.0 + 3.14159 + 1.0 + 0.5
    plain = _decoder().records(loaded[:1], ["x", "y"], "fr")
    assert plain == [{"id": "c1", "text": "x y", "language": "fr", "accent": "American", "duration": 3.142,
                      "num_chunks": 2}]
    assert _decoder().records(loaded[:1], ["x", "y"], "zh")[0]["text"] == "xy"
    assert _decoder().records(loaded[1:2], ["x"], "en", scores=[(-1 / 3, 1)])[0]["score"] == -0.333333


def test_batches_and_groups():
    assert list(_batches([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(_batches([1, 2], 5)) == [[1, 2]] and list(_batches([], 3)) == []
    cuts = [_dcut("a", "en", duration=2.0), _dcut("b", "ja"), _dcut("c", "en"), _dcut("d", sups=False),
            _dcut("e", "en", duration=0.5)]
    decoder = _decoder(batch_size=2)
    # groups by language (none last), each by duration then ID, in batches of batch_size
    assert [[[c.id for c in b] for b in group] for group in decoder.plan(cuts)] == [
        [["e", "c"], ["a"]], [["b"]], [["d"]]]
    decoder.languages = {"a": "fr", "b": "fr", "c": "en"}  # detected: a cut missing there has none
    assert [[[c.id for c in b] for b in group] for group in decoder.plan(cuts)] == [
        [["c"]], [["b", "a"]], [["e", "d"]]]
    mixed = _decoder(batch_size=4, beam_size={"default": 2, "ja": 1})
    mixed.mix_languages = True  # one beam size per batch; cuts without a language apart
    assert [[[c.id for c in b] for b in group] for group in mixed.plan(cuts)] == [
        [["b"]], [["e", "c", "a"]], [["d"]]]


def test_decode_stats_as_dict():
    stats = DecodeStats(cuts=2, audio_seconds=4.0, seconds=1.0)
    d = stats.as_dict()
    assert d["real_time_factor"] == 0.25 and d["cuts"] == 2 and d["skips"] == {} and "numerics" in d
    assert "real_time_factor" not in stats.__dict__
    assert DecodeStats(seconds=1.0).as_dict()["real_time_factor"] is None
