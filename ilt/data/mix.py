"""A knowledge task's data mix: the sources, their weighted interleaving and the sampler.

Each source of the mix is read lazily, cuts without text are dropped (counted),
cuts outside the source's ``languages`` (when given) are left out, each source
is repeated endlessly and the sources are interleaved with ``CutSet.mux`` by
their weights: a weight is the share of the training stream drawn from that
source, so a small source with a large weight is seen several times per epoch.
With ``weight_by: hours`` the mix is by size instead (the paper's enlarged
pool): each source's share of the stream's *audio* is proportional to
``weight x its hours``; ``mux`` draws cuts, so a source's cut weight is
``weight x its number of cuts`` (with weight 1 everywhere, every cut of every
source is equally likely, as if the sources were one pool).
An *epoch* is as many cuts as all sources hold together. The numbers of cuts
and hours come from each manifest's sidecar (``<name>.stats.json``, written
with the manifest by :func:`ilt.data.manifests.save_manifest`), so start-up
does not read the manifests; without a current sidecar, one lazy pass over
the manifest's metadata counts them. An epoch's length in micro-batches is
computed for cut-count batches and dry-run (bounded, :func:`batches_per_epoch`)
for duration buckets.

A source is a ``.jsonl(.gz)`` cut manifest, read lazily
(``load_manifest_lazy``), or a Lhotse Shar directory (``cuts: shar:DIR``,
or a directory holding ``cuts.000000.jsonl.gz``...; ``CutSet.from_shar``).

Batches are formed by Lhotse's ``DynamicBucketingSampler``: ``max_duration``
seconds per micro-batch (at most ``max_cuts`` cuts, when set), or
``micro_batch`` cuts when no duration is set. A
small training set gets fewer duration buckets than ``num_buckets``, so that
each can fill two micro-batches, and one bucket means Lhotse's
``DynamicCutSampler``.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ilt.config import DataSource, TrainSection
from ilt.core.runtime import Skips
from ilt.data.audio import check_sources
from ilt.data.manifests import (
    count_source,
    duplicate_error,
    open_cuts_lazy,
    read_cut_stats,
    shar_dir,
    stats_path,
)
from ilt.errors import IltInputError

log = logging.getLogger("ilt")

#: Lhotse's bucketing sampler keeps at most this many cuts in its buffer.
BUFFER_CUTS = 20000
#: Each duration bucket should hold at least this many full micro-batches of
#: the buffer: a bucket that cannot fill one yields short batches.
BATCHES_PER_BUCKET = 2
#: :func:`batches_per_epoch` dry-runs the sampler over at most this many cuts.
DRY_RUN_CUTS = 2 * BUFFER_CUTS


def has_text(cut: Any) -> bool:
    """Whether a cut has a transcript to train on (its first supervision's text)."""
    return bool(cut.supervisions) and bool((cut.supervisions[0].text or "").strip())


def _in_languages(cut: Any, languages: frozenset[str] | None) -> bool:
    return languages is None or (cut.supervisions[0].language or "").lower() in languages


def _keep(cut: Any, languages: frozenset[str] | None) -> bool:
    return has_text(cut) and len(cut.supervisions) == 1 and _in_languages(cut, languages)


@dataclass
class Mix:
    """The endless weighted stream of training cuts and the size of one epoch."""

    stream: Any
    epoch_cuts: int
    epoch_seconds: float


def source_stats(source: DataSource) -> dict[str, Any]:
    """The counts of ``source`` (:func:`ilt.data.manifests.count_cut`): from the
    manifest's sidecar when it matches the manifest (written with it by
    :func:`ilt.data.manifests.save_manifest`), else by one lazy pass over its
    metadata (a Shar directory: over its ``cuts`` shards)."""
    directory = shar_dir(source.cuts)
    if directory is None:
        path = Path(source.cuts)
        if not path.is_file():
            raise IltInputError(f"{path}: training cut manifest not found")
        stats = read_cut_stats(path)
        if stats is not None:
            return stats
        log.info("train source %s: no %s beside it: counting its cuts by one pass over the manifest",
                 path, stats_path(path).name)
    elif not directory.is_dir():
        raise IltInputError(f"{directory}: Lhotse Shar directory of a training source not found")
    return count_source(source.cuts)


def _usable(cut: Any, languages: frozenset[str] | None, where: str) -> bool:
    check_sources(cut, where)  # a 'command' source would run on every training step
    return _keep(cut, languages)


def open_source(source: DataSource, skips: Skips) -> tuple[Any, int, float]:
    """A lazy CutSet of the cuts of ``source`` to train on (with text, in its
    ``languages``), their number and total duration; cuts without text are
    counted as skips, cuts in other languages are left out silently.

    The numbers come from :func:`source_stats`: the manifest is not read
    here when its sidecar is current. Each cut's audio sources are checked
    as it is drawn, before any audio is loaded."""
    path = source.cuts
    languages = frozenset(lang.lower() for lang in source.languages) if source.languages is not None else None
    stats = source_stats(source)
    if stats["duplicate_id"] is not None:  # outputs and skips are keyed by cut ID
        raise duplicate_error(path, stats["duplicate_id"])
    for reason, cut_id, supervisions in stats["skipped"]:
        if reason == "empty transcript":
            skips.skip(reason, cut_id, str(path))
        else:  # one label for the whole cut would be wrong
            skips.skip(reason, cut_id, f"{path}: {supervisions} supervisions; "
                       f"make one cut per supervision (lhotse CutSet.trim_to_supervisions)")
    n, seconds, other = 0, 0.0, 0
    for language, (count, duration) in stats["languages"].items():
        if languages is None or language in languages:
            n, seconds = n + count, seconds + duration
        else:
            other += count
    if n == 0:
        where = f" in languages {sorted(languages)}" if languages is not None else ""
        raise IltInputError(f"{path}: training source has no cuts with a transcript{where}")
    if other:
        log.info("train source %s: %d cut(s) in other languages than %s left out", path, other, sorted(languages))
    cuts = open_cuts_lazy(path)
    return cuts.filter(functools.partial(_usable, languages=languages, where=str(path))), n, seconds


def mux_weights(sources: Sequence[DataSource], cut_counts: Sequence[int]) -> list[float]:
    """The ``CutSet.mux`` weight of each source: its ``weight``, or with
    ``weight_by: hours`` ``weight x its cuts``, so that its expected share of
    the audio is proportional to ``weight x its hours``."""
    return [s.weight * n if s.weight_by == "hours" else s.weight for s, n in zip(sources, cut_counts)]


def training_stream(sources: Sequence[DataSource], seed: int, skips: Skips) -> Mix:
    """The endless weighted mix of the sources, and the number of cuts and
    seconds of audio per epoch."""
    from lhotse import CutSet

    if not sum(s.weight for s in sources) > 0:
        raise IltInputError(f"the data mix weights {[s.weight for s in sources]} sum to zero: "
                            f"give at least one source a weight")
    opened = [open_source(source, skips) for source in sources]
    weights = mux_weights(sources, [n for _, n, _ in opened])
    for source, (_, n, seconds), weight in zip(sources, opened, weights):
        log.info("train source %s: %d cuts, %.1f h, weight %g%s", source.cuts, n, seconds / 3600, source.weight,
                 f" by hours (cut weight {weight:g})" if source.weight_by == "hours" else "")
    repeated = [cuts.repeat(preserve_id=True) for cuts, _, _ in opened]
    stream = repeated[0] if len(repeated) == 1 else CutSet.mux(*repeated, weights=weights, seed=seed)
    return Mix(stream, sum(n for _, n, _ in opened), sum(seconds for _, _, seconds in opened))


def buffer_cuts(epoch_cuts: int) -> int:
    """Cuts in the bucketing sampler's buffer: one epoch, at most :data:`BUFFER_CUTS`."""
    return max(1, min(BUFFER_CUTS, epoch_cuts))


def bucket_count(train: TrainSection, mix: Mix) -> int:
    """``train.num_buckets``, reduced so that each bucket of the sampler's
    buffer holds :data:`BATCHES_PER_BUCKET` full micro-batches.

    Lhotse draws a batch from one bucket only; with more buckets than the
    buffer can fill (a small training set), most batches come out short (on
    32 cuts, 10 buckets and micro-batch 8, batches of 1 to 8 cuts, mean 4.4).
    """
    if train.max_duration:
        mean_seconds = mix.epoch_seconds / max(1, mix.epoch_cuts)
        cuts_per_batch = max(1.0, train.max_duration / mean_seconds) if mean_seconds > 0 else 1.0
        if getattr(train, "max_cuts", None):
            cuts_per_batch = min(cuts_per_batch, float(train.max_cuts))
    else:
        cuts_per_batch = float(train.micro_batch)
    fits = int(buffer_cuts(mix.epoch_cuts) // (BATCHES_PER_BUCKET * cuts_per_batch))
    return max(1, min(train.num_buckets, fits))


def make_sampler(mix: Mix, train: TrainSection, world_size: int = 1, rank: int = 0) -> Any:
    """Lhotse's ``DynamicBucketingSampler`` (``DynamicCutSampler`` when the
    data fill a single bucket), for one of ``world_size`` processes."""
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

    max_cuts = train.max_cuts if train.max_duration else train.micro_batch
    common = dict(max_duration=train.max_duration, max_cuts=max_cuts,
                  shuffle=True, drop_last=False, seed=train.seed, world_size=world_size, rank=rank)
    buckets = bucket_count(train, mix)
    if buckets < 2:
        # an epoch's worth of shuffle buffer: Lhotse's default (20000 cuts) reads
        # thousands of repeats of a small set before its first batch
        return DynamicCutSampler(mix.stream, shuffle_buffer_size=buffer_cuts(mix.epoch_cuts), **common)
    return DynamicBucketingSampler(
        mix.stream, num_buckets=buckets, buffer_size=buffer_cuts(mix.epoch_cuts),
        num_cuts_for_bins_estimate=max(1, min(10000, mix.epoch_cuts)), **common)


def batches_per_epoch(mix: Mix, train: TrainSection) -> int:
    """Micro-batches one process draws for one epoch of cuts.

    Batches of ``micro_batch`` cuts without duration buckets: exactly
    ``ceil(epoch_cuts / micro_batch)`` (the stream is endless, so every
    batch is full). Otherwise a dry run of the sampler (metadata only, no
    audio), exact for an epoch of at most :data:`DRY_RUN_CUTS` cuts; a larger
    epoch is estimated from the mean batch of the first :data:`DRY_RUN_CUTS`
    cuts (logged), so start-up never reads a large manifest whole.
    """
    if not train.max_duration and bucket_count(train, mix) < 2:
        return max(1, math.ceil(mix.epoch_cuts / train.micro_batch))
    seen = batches = 0
    for batch in make_sampler(mix, train):
        seen += len(batch)
        batches += 1
        if seen >= mix.epoch_cuts:
            return batches
        if seen >= DRY_RUN_CUTS:
            break
    estimate = max(1, math.ceil(mix.epoch_cuts * batches / max(1, seen)))
    log.info("one epoch of %d cuts: about %d micro-batches (estimated from the first %d batches, %d cuts)",
             mix.epoch_cuts, estimate, batches, seen)
    return estimate


def log_buckets(train: TrainSection, mix: Mix) -> None:
    """Say when the data cannot fill ``num_buckets`` duration buckets."""
    buckets = bucket_count(train, mix)
    if buckets < train.num_buckets:
        log.info("%d duration bucket(s) instead of num_buckets %d: %d training cuts fill only %d bucket(s) "
                 "with %d full micro-batches each", buckets, train.num_buckets, mix.epoch_cuts, buckets,
                 BATCHES_PER_BUCKET)
