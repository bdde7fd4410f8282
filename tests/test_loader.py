"""The training input pipeline: the DataLoader and its workers
(ilt/training/loader.py), duration buckets, the epoch's length without
reading manifests whole, and Lhotse Shar sources (ilt/data/mix.py)."""

from __future__ import annotations

import gzip
import json
import math
import pickle

import pytest

from ilt.config import DataSource, RoundConfig, from_dict
from ilt.core.runtime import Skips
from ilt.data import mix as mix_mod
from ilt.errors import IltInputError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``many``: 16 cuts of 0.5 to 2 s (with its sidecar); ``raw``: the same
    written by lhotse alone (no sidecar)."""
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts

    tmp = tmp_path_factory.mktemp("data")
    texts = ["hello world", "good morning", "thank you", "see you soon"]
    many = make_cuts(tmp / "many", [{"id": f"m{i:02d}", "text": texts[i % 4], "duration": 0.5 + 0.1 * i}
                                    for i in range(16)])
    many.to_file(tmp / "raw.jsonl.gz")
    return {"many": save_manifest(many, tmp / "many.jsonl.gz"), "raw": tmp / "raw.jsonl.gz", "cuts": many}


def _train(**train):
    return from_dict(RoundConfig, {"name": "focus", "train": {"precision": "fp32", "micro_batch": 2, **train}}).train


def _backbone(model_dir):
    import torch

    from ilt.core.registry import create

    return create("backbone", RoundConfig(name="x").backbone, model_dir, dtype=torch.float32, device=None)


def _mix(path):
    return mix_mod.training_stream([DataSource(str(path), 1.0)], 0, Skips("test"))


# --------------------------------------------------------------------------- workers


def test_workers_give_the_same_batches_as_the_main_process(base_dir, data):
    import torch

    from ilt.training.loader import make_loader

    backbone = _backbone(base_dir)
    mix = _mix(data["many"])

    def batches(workers):
        feed = make_loader(backbone, mix, _train(micro_batch=3, num_workers=workers, max_steps=4, eval_every=2))
        assert feed.loader.num_workers == workers and feed.steps_per_epoch is None
        assert feed.loader.dataset.collator is backbone.collator  # the model stays in the main process
        return [batch for _, batch in zip(range(8), feed.loader)]

    main, workers = batches(0), batches(2)
    assert [b.cut_ids for b in main] == [b.cut_ids for b in workers]
    assert len({tuple(b.cut_ids) for b in main}) > 4  # not one batch over and over
    for a, b in zip(main, workers):
        assert a.tensors.keys() == b.tensors.keys() and "input_features" in a.tensors
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_spawned_workers_give_the_same_batches(base_dir, data):
    """Workers that receive the dataset pickled (spawn; forkserver likewise)."""
    import torch

    from ilt.training.loader import make_loader

    backbone = _backbone(base_dir)
    mix = _mix(data["many"])
    runs = [[batch for _, batch in zip(range(2), make_loader(
        backbone, mix, _train(micro_batch=3, num_workers=workers, max_steps=1, eval_every=1),
        start_method=method).loader)] for workers, method in ((0, None), (1, "spawn"))]
    assert [b.cut_ids for b in runs[0]] == [b.cut_ids for b in runs[1]]
    assert all(torch.equal(a.tensors["input_features"], b.tensors["input_features"]) for a, b in zip(*runs))


def test_the_collator_holds_no_model_and_pickles(base_dir, data):
    import torch

    from ilt.training.loader import CollateDataset, collator_of

    backbone = _backbone(base_dir)
    collator = collator_of(backbone)
    assert not any(isinstance(v, torch.nn.Module) for v in vars(collator).values())
    dataset = CollateDataset(collator)
    copy = pickle.loads(pickle.dumps(dataset))  # what a spawn or forkserver worker receives
    cuts = data["cuts"].subset(first=4)
    a, b = dataset[cuts], copy[cuts]
    assert a.cut_ids == b.cut_ids == [c.id for c in cuts]
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


# --------------------------------------------------------------------------- batches and epochs


def test_duration_buckets_respect_max_duration(data):
    from lhotse.dataset import DynamicBucketingSampler

    mix = _mix(data["many"])
    train = _train(max_duration=4.0, num_buckets=3)
    sampler = mix_mod.make_sampler(mix, train)
    assert isinstance(sampler, DynamicBucketingSampler) and mix_mod.bucket_count(train, mix) == 2
    batches = [batch for _, batch in zip(range(40), sampler)]
    assert all(sum(c.duration for c in batch) <= 4.0 + 1e-9 for batch in batches)
    assert max(len(batch) for batch in batches) >= 3  # batches are filled by seconds, not one cut each
    capped = _train(max_duration=4.0, max_cuts=2, num_buckets=3)
    assert mix_mod.bucket_count(capped, mix) == 3  # 2 cuts a batch: 16 // 4 = 4 buckets, at most 3
    batches = [batch for _, batch in zip(range(40), mix_mod.make_sampler(mix, capped))]
    assert max(len(batch) for batch in batches) == 2
    assert all(sum(c.duration for c in batch) <= 4.0 + 1e-9 for batch in batches)


def _dry_run(mix, train):
    """The old count: the sampler run until it has drawn one epoch of cuts."""
    seen = batches = 0
    for batch in mix_mod.make_sampler(mix, train):
        seen, batches = seen + len(batch), batches + 1
        if seen >= mix.epoch_cuts:
            return batches


@pytest.mark.parametrize("train", [dict(micro_batch=3, num_buckets=1), dict(micro_batch=16, num_buckets=10),
                                   dict(micro_batch=2, num_buckets=10), dict(max_duration=4.0, num_buckets=3)])
def test_the_epoch_length_is_the_dry_runs(data, train):
    mix = _mix(data["many"])
    assert mix_mod.batches_per_epoch(mix, _train(**train)) == _dry_run(mix, _train(**train))


def test_a_large_epoch_is_estimated_from_a_bounded_dry_run(data, monkeypatch, caplog):
    from lhotse import CutSet

    read = []

    def counted(cut):
        read.append(cut.id)
        return cut

    stream = CutSet.from_cuts(list(data["cuts"])).repeat(preserve_id=True).map(counted)
    mix = mix_mod.Mix(stream, 1000, 1000 * 1.25)  # claims 1000 cuts: 62 repeats of the 16
    monkeypatch.setattr(mix_mod, "BUFFER_CUTS", 40)
    monkeypatch.setattr(mix_mod, "DRY_RUN_CUTS", 100)
    train = _train(max_duration=4.0, num_buckets=2)
    with caplog.at_level("INFO", logger="ilt"):
        estimate = mix_mod.batches_per_epoch(mix, train)
    # the bins estimate reads 1000 cuts... of metadata at most 10000; the buffer 40, the dry run 100
    assert len(read) <= 1000 + 40 + 100 + 10
    assert "estimated from the first" in caplog.text
    assert 1000 / 4 <= estimate <= 1000  # at most 4 cuts of >= 0.5 s... and at least one cut a batch


# --------------------------------------------------------------------------- counting without reading


def test_save_manifest_writes_the_counts_and_training_reads_them(data, tmp_path, caplog):
    from ilt.data.manifests import read_cut_stats, save_manifest, stats_path

    assert stats_path(data["many"]).name == "many.stats.json" and stats_path(data["many"]).is_file()
    stats = read_cut_stats(data["many"])
    assert stats["cuts"] == 16 and stats["languages"]["en"][0] == 16 and stats["duplicate_id"] is None
    assert read_cut_stats(data["raw"]) is None  # written by lhotse alone: counted by one pass
    with caplog.at_level("INFO", logger="ilt"):
        sidecar, raw = _mix(data["many"]), _mix(data["raw"])
    assert "raw.jsonl.gz: no raw.stats.json beside it" in caplog.text and "many.stats.json" not in caplog.text
    assert (sidecar.epoch_cuts, sidecar.epoch_seconds) == (raw.epoch_cuts, raw.epoch_seconds)
    # weight_by: hours weighs each source by its counted cuts: the same stream from counts or from a pass
    a_raw = tmp_path / "a.jsonl.gz"
    data["cuts"].subset(first=5).to_file(a_raw)
    a = save_manifest(data["cuts"].subset(first=5), tmp_path / "a_side.jsonl.gz")

    def first_ids(paths):
        mix = mix_mod.training_stream([DataSource(str(p), 1.0, weight_by="hours") for p in paths], 3, Skips("t"))
        return [c.id for _, c in zip(range(60), mix.stream)]

    assert first_ids([a, data["many"]]) == first_ids([a_raw, data["raw"]])
    # a manifest rewritten without its sidecar: the stale sidecar is not used
    changed = tmp_path / "c.jsonl.gz"
    save_manifest(data["cuts"], changed)
    data["cuts"].subset(first=3).to_file(changed)
    assert read_cut_stats(changed) is None and _mix(changed).epoch_cuts == 3


def test_start_up_does_not_read_a_manifest_with_counts(data, base_dir, tmp_path):
    """A manifest whose text past its 16 cuts is garbage: with its sidecar the
    training stream, the loader and the first batches never reach it; without,
    the one counting pass does."""
    from ilt.data.manifests import count_source, write_cut_stats
    from ilt.training.loader import make_loader

    path = tmp_path / "broken.jsonl.gz"
    lines = gzip.decompress(data["many"].read_bytes())
    path.write_bytes(gzip.compress(lines + b"{not json\n"))
    with pytest.raises(IltInputError, match=r"broken.jsonl.gz: cannot read cut manifest: JSONDecodeError"):
        _mix(path)
    write_cut_stats(path, count_source(data["many"]))  # the counts of its 16 good cuts
    mix = _mix(path)
    assert mix.epoch_cuts == 16
    feed = make_loader(_backbone(base_dir), mix, _train(micro_batch=4, num_buckets=1, max_steps=2, eval_every=2))
    # the garbage is there: drawing batches reaches it (the shuffle buffer
    # holds an epoch, 16 cuts, and reads the 17th before the first batch)
    with pytest.raises(IltInputError, match=r"broken.jsonl.gz: cannot read cut manifest: JSONDecodeError"):
        next(iter(feed.loader))
    # without max_steps the epoch's length is computed, still without reading
    feed = make_loader(_backbone(base_dir), mix, _train(micro_batch=4, num_buckets=1))
    assert feed.steps_per_epoch == 4


def test_duplicates_and_command_sources_are_refused_with_counts(data, tmp_path, monkeypatch):
    from lhotse import CutSet

    from ilt.data.manifests import save_manifest

    cuts = list(data["cuts"].subset(first=3))
    dup = save_manifest(CutSet.from_cuts(cuts + [cuts[0]]), tmp_path / "dup.jsonl.gz")
    with pytest.raises(IltInputError, match=r"dup.jsonl.gz: cut ID 'm00' appears more than once"):
        _mix(dup)
    monkeypatch.delenv("ILT_ALLOW_AUDIO_COMMANDS", raising=False)
    evil = cuts[1].to_dict()
    evil["recording"]["sources"] = [{"type": "command", "channels": [0], "source": "touch pwned"}]
    from lhotse.cut import MonoCut

    path = save_manifest(CutSet.from_cuts([cuts[0], MonoCut.from_dict(evil)]), tmp_path / "evil.jsonl.gz")
    mix = _mix(path)  # counted from the sidecar: the check comes as each cut is drawn
    with pytest.raises(IltInputError, match=r"evil.jsonl.gz: cut 'm01': audio source of type 'command'"):
        [c.id for _, c in zip(range(4), mix.stream)]


# --------------------------------------------------------------------------- Lhotse Shar


def test_a_shar_directory_is_a_training_source(base_dir, data, tmp_path):
    from ilt.training.loop import train_round

    shar = tmp_path / "shar"
    shar.mkdir()
    data["cuts"].subset(first=6).to_shar(shar, fields={"recording": "wav"}, shard_size=4)
    for spec in (f"shar:{shar}", str(shar)):
        mix = mix_mod.training_stream([DataSource(spec, 1.0)], 0, Skips("t"))
        assert mix.epoch_cuts == 6
        first = next(iter(mix.stream))
        assert first.recording.sources[0].type == "memory" and first.load_audio().size > 0
    from ilt.cli.options import parse_sources

    assert parse_sources([f"shar:{shar}:2", f"shar:{shar}", "a.jsonl.gz:0.5"]) == [
        (f"shar:{shar}", 2.0), (f"shar:{shar}", 1.0), ("a.jsonl.gz", 0.5)]  # ilt train --train shar:DIR[:WEIGHT]
    with pytest.raises(IltInputError, match=r"nowhere: Lhotse Shar directory of a training source not found"):
        mix_mod.training_stream([DataSource(f"shar:{tmp_path / 'nowhere'}", 1.0)], 0, Skips("t"))
    config = from_dict(RoundConfig, {"name": "focus", "lora": {"r": 4},
                                     "train": {"lr": 1e-3, "micro_batch": 2, "precision": "fp32", "max_steps": 1,
                                               "num_workers": 1}})
    result = train_round(config, base_dir, tmp_path / "out", train_cuts=[(f"shar:{shar}", 1.0)])
    assert result.steps == 1 and (tmp_path / "out" / "final" / "adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["epoch_cuts"] == 6 and log[1]["loss"] is not None and math.isfinite(log[1]["loss"])


# --------------------------------------------------------------------------- shipped configurations


def test_mlc_slm_rounds_batch_by_seconds_and_the_mini_recipe_by_cuts():
    from pathlib import Path

    from ilt.config import ExpertsConfig, load_with_overrides

    root = Path(__file__).resolve().parent.parent / "egs"
    for name in ("focus", "feedback", "fix", "distill", "experts"):
        cls = ExpertsConfig if name == "experts" else RoundConfig
        mlc, mini = (load_with_overrides(root / recipe / "conf" / f"{name}.yaml", cls) for recipe in ("mlc_slm", "mini"))
        assert mlc.train.max_duration and mlc.train.max_cuts and 4 <= mlc.train.num_workers <= 8, name
        # never more cuts than the micro-batch the memory plan is made for
        assert mlc.train.max_cuts <= mlc.train.micro_batch, name
        assert mini.train.max_duration is None and mini.train.num_workers == 0, name
