"""The training data loader: a torch ``DataLoader`` over Lhotse's sampler.

The sampler (:func:`ilt.data.mix.make_sampler`) runs in the main process: it
reads cut metadata only and decides every batch, so the batches, their order
and a resumed run's position (:class:`ilt.training.checkpoint.TrainState`)
do not depend on the number of workers. Each batch of cuts goes to a worker
process (``train.num_workers``; ``0``: the main process), where the backbone's
*collator* loads the audio and computes the features (log-mels) and labels.
The collator holds no model (``backbone.collator``: Whisper's
:class:`ilt.models.whisper_io.WhisperCollator`, Qwen2-Audio's
``Qwen2AudioCollator``): only a tokenizer and a feature extractor, so it
pickles and a worker does not hold a copy of the weights.

Workers start with the platform's default method of ``multiprocessing``
(``fork`` on Linux with Python up to 3.13; forked after CUDA is initialised
is safe, since workers never touch the GPU); the dataset pickles, so
``spawn`` and ``forkserver`` (Python 3.14's default on Linux) work too
(tested). Workers run torch with one thread each (torch sets it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from ilt.config import TrainSection
from ilt.data.mix import Mix, batches_per_epoch, make_sampler

log = logging.getLogger("ilt")


def _identity(batch: Any) -> Any:
    return batch


class CollateDataset:
    """Map-style dataset over the sampler's output: ``dataset[cuts] -> Batch``
    by ``collator(cuts)``; picklable when the collator is."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __getitem__(self, cuts: Any) -> Any:
        return self.collator(cuts)


def collator_of(backbone: Any) -> Any:
    """The backbone's model-free collator (``backbone.collator``), or its
    ``collate`` method for a backbone that has none (workers then hold the
    backbone: fine under ``fork``, a pickled model under ``spawn``)."""
    collator = getattr(backbone, "collator", None)
    if callable(collator):
        return collator
    return backbone.collate


@dataclass
class Feed:
    """What :func:`make_loader` builds."""

    #: endless iterable of collated :class:`ilt.backbone.Batch` es
    loader: Any
    #: the Lhotse sampler (its state is checkpointed)
    sampler: Any
    #: optimiser steps per epoch on each process; ``None`` when not needed
    #: (``max_steps`` and ``eval_every`` both set)
    steps_per_epoch: int | None


def make_loader(backbone: Any, mix: Mix, train: TrainSection, num_processes: int = 1,
                process_index: int = 0, *, start_method: str | None = None) -> Feed:
    """The training batches of one of ``num_processes`` processes: the
    sampler over ``mix``, a ``DataLoader`` with ``train.num_workers`` workers
    running the backbone's collator, and the epoch's length in optimiser
    steps (:func:`ilt.data.mix.batches_per_epoch`). ``start_method``
    (``fork``, ``spawn``, ``forkserver``): how workers start; default the
    platform's."""
    import torch

    sampler = make_sampler(mix, train, num_processes, process_index)
    steps_per_epoch = None
    if train.max_steps is None or train.eval_every is None:
        per_process = math.ceil(batches_per_epoch(mix, train) / num_processes)
        steps_per_epoch = max(1, math.ceil(per_process / train.grad_accum))
    loader = torch.utils.data.DataLoader(
        CollateDataset(collator_of(backbone)), sampler=sampler, batch_size=None, collate_fn=_identity,
        num_workers=train.num_workers, generator=torch.Generator().manual_seed(train.seed),
        persistent_workers=False,
        multiprocessing_context=start_method if train.num_workers else None)
    return Feed(loader, sampler, steps_per_epoch)


__all__ = ["CollateDataset", "Feed", "collator_of", "make_loader"]
