"""The run-time state of a process: its rank among the launched processes, logging, counted skips."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("ilt")

def process_state() -> Any:
    """Accelerate's ``PartialState`` of this process.

    Under ``torchrun`` (or ``accelerate launch --multi_gpu``) on a machine
    without CUDA, Accelerate's default state sees each process alone
    (``num_processes`` 1), so every process would do all the work (and write
    the same files): without CUDA, several processes are CPU processes (gloo).
    So are those of a config with ``use_cpu: true`` (the recipe launches them
    under ``ACCELERATE_USE_CPU``, :mod:`ilt.core.launch`). Under an FSDP config
    on CPU processes, Accelerate (1.16) keeps ``MULTI_CPU`` and does not apply
    its FSDP plugin; :func:`launched_fsdp_version` tells the training loop to
    shard with ``fully_shard`` itself (:mod:`ilt.training.sharding`).
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (several and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def launched_fsdp_version() -> int | None:
    """The FSDP version ``accelerate launch`` set for this process (an FSDP config), or None.

    Accelerate's torchrun launcher exports ``ACCELERATE_USE_FSDP=true`` and
    ``FSDP_VERSION`` from an FSDP config (``conf/accelerate/fsdp2_*.yaml``).
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    return int(os.environ.get("FSDP_VERSION", "1"))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    # bitsandbytes (the [opt8bit] extra, imported by PEFT) warns on every import on a CPU machine that
    # it cannot fetch an optional kernel from the hub: ilt never fetches it, the 8-bit optimiser works
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class Skips:
    """Counted, logged skips of bad input, reported at the end of a stage.

    ``skip(reason, item, detail)`` logs one warning naming the item (a file,
    line or cut ID) and counts it under ``reason``; ``report()`` logs the
    totals and returns them.
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.items: dict[str, list[str]] = {}

    def skip(self, reason: str, item: str, detail: str = "") -> None:
        self.items.setdefault(reason, []).append(item)
        log.warning("%s: skipped %s: %s%s", self.stage, item, reason, f" ({detail})" if detail else "")

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.items.values())

    def counts(self) -> dict[str, int]:
        return {reason: len(items) for reason, items in self.items.items()}

    def report(self) -> dict[str, int]:
        if self.total:
            detail = ", ".join(f"{n} {reason}" for reason, n in self.counts().items())
            log.warning("%s: skipped %d item(s): %s", self.stage, self.total, detail)
        return self.counts()
