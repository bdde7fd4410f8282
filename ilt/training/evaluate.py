"""Dev evaluation of a round: dev loss and dev error rate, as ``ilt score`` computes it.

References are read with :func:`ilt.asr.score.references` (every supervision of a
cut joined in time order), the same function ``ilt score`` reads a reference
manifest with, so a dev WER logged during training and ``ilt score`` on the
same cuts and hypotheses agree.

Several processes share the work: process ``r`` of ``n`` takes the dev cuts
``r, r + n, r + 2n, ...`` (:func:`dev_shard`), computes their loss and decodes
them through :class:`ilt.asr.decode.Decoder`; the losses and hypotheses are
gathered, the main process scores them, and the score is broadcast, so every
process holds the same ``score.json`` record (and takes the same best-adapter
decision). The score equals one process's on the same cuts: the hypotheses
are the same (a greedy or beam search of one cut does not depend on the other
cuts of its batch) and the dev loss is the cut-weighted mean of the same
batch losses when ``micro_batch`` is 1 (with larger micro-batches the batches,
and so the token weighting inside each, differ by a little).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ilt.config import DecodeConfig
from ilt.errors import IltInputError

log = logging.getLogger("ilt")


def load_dev(path: str | Path, max_cuts: int | None = None) -> Any:
    """The dev cuts with a reference text, eagerly; at most ``max_cuts``
    evenly spaced over the set, so every language and accent stays in."""
    from lhotse import CutSet

    from ilt.asr.score import reference_of
    from ilt.data.manifests import load_cuts

    dev = load_cuts(path).filter(lambda cut: bool((reference_of(cut, str(path))[1] or "").strip())).to_eager()
    if max_cuts is not None and len(dev) > max_cuts:
        stride = len(dev) / max_cuts
        keep = {int(i * stride) for i in range(max_cuts)}
        dev = CutSet.from_cuts(c for i, c in enumerate(dev) if i in keep)
    if len(dev) == 0:
        raise IltInputError(f"{path}: dev set has no cuts with a transcript")
    return dev


def dev_shard(dev: Any, rank: int, world: int) -> list[Any]:
    """Process ``rank``'s dev cuts of ``world``: every ``world``-th cut from the
    ``rank``-th (balanced in number and in length across processes)."""
    return list(dev)[rank::world]


def dev_loss_sums(backbone: Any, model: Any, loss_fn: Any, dev: Any, micro_batch: int,
                  device: Any) -> tuple[float, float]:
    """``(sum of batch loss x cuts, cuts)`` over ``dev`` (to be pooled over processes)."""
    import torch
    from lhotse import CutSet

    total = weight = 0.0
    cuts = list(dev)
    with torch.no_grad():
        for i in range(0, len(cuts), micro_batch):
            batch = backbone.collate(CutSet.from_cuts(cuts[i:i + micro_batch]))
            if not len(batch):
                continue
            loss = float(loss_fn(backbone, model, batch.to(device)))
            total += loss * len(batch)
            weight += len(batch)
    return total, weight


def dev_loss(backbone: Any, model: Any, loss_fn: Any, dev: Any, micro_batch: int, device: Any) -> float | None:
    """The loss over the dev cuts, weighted by cuts (``None``: nothing collated)."""
    total, weight = dev_loss_sums(backbone, model, loss_fn, dev, micro_batch, device)
    return total / weight if weight else None


class Collective:
    """What :func:`evaluate` needs of the processes: their number, this one's
    index, and object gather and broadcast (one process: the identity)."""

    def __init__(self, accelerator: Any = None) -> None:
        self.accelerator = accelerator
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.rank = accelerator.process_index if accelerator is not None else 0

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order (on every process)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]


def evaluate(backbone: Any, model: Any, loss_fn: Any, dev: Any, decode_config: DecodeConfig, *, metric: str,
             micro_batch: int, device: Any, step: int, collective: Collective | None = None) -> dict[str, Any]:
    """Dev loss, then decode and score ``dev`` per language; ``model`` must be
    in eval mode. Returns the ``score.json`` record: ``{step, metric, value,
    dev_loss, group_by, rows, overall, ...}`` where ``value`` is ``metric``
    (``dev_wer``: the pooled error rate; ``dev_loss``).

    With a :class:`Collective` of several processes, call it on every process:
    each takes its :func:`dev_shard`, and every process returns the main
    process's record."""
    from ilt.asr.decode import decode_cuts
    from ilt.asr.score import references, score

    collective = collective or Collective()
    shard = dev_shard(dev, collective.rank, collective.world)
    sums = dev_loss_sums(backbone, model, loss_fn, shard, micro_batch, device)
    records = decode_cuts(backbone, model, shard, decode_config, progress=False) if shard else []
    every = collective.gather((sums, [(r["id"], r.get("text") or "") for r in records]))
    if collective.rank != 0:
        return collective.broadcast(None)
    total, weight = sum(s[0] for s, _ in every), sum(s[1] for s, _ in every)
    loss = total / weight if weight else None
    hyps = {cut_id: text for _, pairs in every for cut_id, text in pairs}
    result = score(references(dev), hyps, group_by="language")
    value = loss if metric == "dev_loss" else result.overall.error_rate
    rates = {row.group: row.error_rate for row in result.rows}
    log.info("step %d: dev loss %s, error rate %s (%s)", step, f"{loss:.4f}" if loss is not None else "n/a",
             f"{result.overall.error_rate:.2f}" if result.overall.error_rate is not None else "n/a",
             ", ".join(f"{g} {r:.2f}" for g, r in rates.items() if r is not None))
    return collective.broadcast({"step": step, "metric": metric, "value": value, "dev_loss": loss,
                                 **result.to_dict()})
