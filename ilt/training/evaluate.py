"""Dev evaluation of a round: dev loss and dev error rate, as ``ilt score`` computes it.

References are read with :func:`ilt.asr.score.references` (every supervision of a
cut joined in time order), the same function ``ilt score`` reads a reference
manifest with, so a dev WER logged during training and ``ilt score`` on the
same cuts and hypotheses agree.
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


def dev_loss(backbone: Any, model: Any, loss_fn: Any, dev: Any, micro_batch: int, device: Any) -> float | None:
    """The loss over the dev cuts, weighted by cuts (``None``: nothing collated)."""
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
    return total / weight if weight else None


def evaluate(backbone: Any, model: Any, loss_fn: Any, dev: Any, decode_config: DecodeConfig, *, metric: str,
             micro_batch: int, device: Any, step: int) -> dict[str, Any]:
    """Dev loss, then decode and score ``dev`` per language; ``model`` must be
    in eval mode. Returns the ``score.json`` record: ``{step, metric, value,
    dev_loss, group_by, rows, overall, ...}`` where ``value`` is ``metric``
    (``dev_wer``: the pooled error rate; ``dev_loss``)."""
    from ilt.asr.decode import decode_cuts
    from ilt.asr.score import references, score

    loss = dev_loss(backbone, model, loss_fn, dev, micro_batch, device)
    records = decode_cuts(backbone, model, dev, decode_config, progress=False)
    hyps = {r["id"]: r.get("text") or "" for r in records}
    result = score(references(dev), hyps, group_by="language")
    value = loss if metric == "dev_loss" else result.overall.error_rate
    rates = {row.group: row.error_rate for row in result.rows}
    log.info("step %d: dev loss %s, error rate %s (%s)", step, f"{loss:.4f}" if loss is not None else "n/a",
             f"{result.overall.error_rate:.2f}" if result.overall.error_rate is not None else "n/a",
             ", ".join(f"{g} {r:.2f}" for g, r in rates.items() if r is not None))
    return {"step": step, "metric": metric, "value": value, "dev_loss": loss, **result.to_dict()}
