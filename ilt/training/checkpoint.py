"""A round's resumable training state and its atomic checkpoints.

``checkpoints/step-N/`` holds Accelerate's state (optimiser, scheduler, RNG
states, the :class:`TrainState` counters with the sampler position) plus
``adapter/``, a complete adapter directory (:mod:`ilt.models.adapter`: LoRA weights,
``round.yaml``, ``manifests.json``, ``score.json`` = ``{"step": N}``), so a
checkpoint of any step can be merged or decoded like a round's ``best/``.
The full model is never saved (an Accelerate save hook writes the LoRA only).

A checkpoint is written under a temporary name and renamed when complete; the
last :data:`KEEP_CHECKPOINTS` are kept. Resuming restores the sampler to the
last *consumed* batch, so a resumed run ends with the adapter an uninterrupted
run would have (bitwise on CPU).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from ilt.config import RoundConfig
from ilt.core.files import replace_dir
from ilt.errors import IltInputError
from ilt.models import lid
from ilt.models.adapter import ADAPTER_WEIGHTS, CHECKPOINT_ADAPTER, write_adapter_files

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
_CKPT_NAME = re.compile(r"^step-(\d+)$")


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temporary ones are hidden)."""
    root = Path(out_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _CKPT_NAME.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found)


def remove_partial_writes(out_dir: str | Path) -> list[Path]:
    """Remove the temporary directories a killed run left in ``out_dir`` (an
    adapter's ``.best.*.tmp``, a checkpoint's ``checkpoints/.step-N.tmp``):
    a SIGKILL gives no chance to clean up, and they are never read."""
    out_dir = Path(out_dir)
    stale = [p for p in [*out_dir.glob(".*.tmp"), *(out_dir / CHECKPOINTS).glob(".step-*.tmp")] if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


class TrainState:
    """Counters saved in every checkpoint (with Accelerate's own state)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.step = 0            # optimiser steps done
        self.micro_batches = 0   # micro-batches consumed (not merely prefetched)
        self.cuts = 0            # cuts consumed, for the epoch counter
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.best_score: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.skipped: dict[str, list[str]] = {}

    def sampler_state(self) -> dict[str, Any]:
        """The sampler's state at the last *consumed* batch: a DataLoader with
        workers prefetches, so the sampler itself has run ahead."""
        sd = self.sampler.state_dict()
        diag = sd["diagnostics"]
        epoch = diag["current_epoch"]
        stats = dict(diag["stats_per_epoch"][epoch])
        stats.update(kept_batches=self.micro_batches, discarded_batches=0)
        diag["stats_per_epoch"] = {**diag["stats_per_epoch"], epoch: stats}
        return sd

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "micro_batches": self.micro_batches, "cuts": self.cuts,
            "best_metric": self.best_metric, "best_step": self.best_step, "best_score": self.best_score,
            "last_eval": self.last_eval,
            "skipped": self.skipped, "sampler": self.sampler_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        sd = dict(sd)
        self.sampler.load_state_dict(sd.pop("sampler"))  # fast-forwards to the saved position
        for key, value in sd.items():
            setattr(self, key, value)


def _adapter_name(i: int) -> str:
    return CHECKPOINT_ADAPTER if i == 0 else f"{CHECKPOINT_ADAPTER}_{i}"


class Checkpointer:
    """Saves and restores a run's checkpoints through Accelerate.

    :param manifests: the run's ``manifests.json`` content, copied into each
        checkpoint's adapter directory.
    """

    def __init__(self, accelerator: Any, out_dir: Path, config: RoundConfig, manifests: list[dict[str, Any]] | None,
                 state: TrainState) -> None:
        self.accelerator, self.out_dir, self.config = accelerator, out_dir, config
        self.manifests, self.state = manifests, state
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)

    def _save_hook(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        """Write only the LoRA, as an adapter directory (not the full model)."""
        if self.accelerator.is_main_process:
            for i, model in enumerate(models):
                directory = Path(output_dir) / _adapter_name(i)
                directory.mkdir(parents=True, exist_ok=True)
                write_adapter_files(self.accelerator.unwrap_model(model), directory, self.config,
                                    self.manifests, {"step": self.state.step, "checkpoint": True})
        weights.clear()

    def _load_hook(self, models: list[Any], input_dir: str) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        for i, model in enumerate(models):
            path = os.path.join(input_dir, _adapter_name(i), ADAPTER_WEIGHTS)
            if not os.path.isfile(path):
                raise IltInputError(f"{input_dir}: checkpoint has no adapter weights ({path})")
            result = set_peft_model_state_dict(self.accelerator.unwrap_model(model), load_file(path))
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise IltInputError(f"{path}: adapter weights do not fit this LoRA: {unexpected[:3]}")
            lid.load_weights(self.accelerator.unwrap_model(model), os.path.dirname(path))
        models.clear()

    def save(self, step: int) -> None:
        """``checkpoints/step-N``: written under a temporary name, then renamed;
        the last :data:`KEEP_CHECKPOINTS` are kept."""
        accelerator = self.accelerator
        root = self.out_dir / CHECKPOINTS
        final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
        except Exception as exc:  # a full disk: name it and the last good checkpoint; remove the partial one
            self._save_failed(tmp, final, exc)
            raise
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            replace_dir(tmp, final)
            for _, old in list_checkpoints(self.out_dir)[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def _save_failed(self, tmp: Path, final: Path, exc: BaseException) -> None:
        """Remove the partial checkpoint ``tmp``; raise :class:`IltInputError`
        when the disk is the cause (else the caller re-raises ``exc``)."""
        from ilt.core.files import os_error_line, storage_problem

        problem = None if isinstance(exc, IltInputError) else (os_error_line(exc) or storage_problem(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
        if problem is None:
            return
        last = list_checkpoints(self.out_dir)
        cause = problem if isinstance(problem, str) else f"{problem[0]}; {problem[1]}"
        raise IltInputError(f"{final}: checkpoint not written: {cause}"
                            + (f"; training resumes from {last[-1][1]}" if last else "")) from exc

    def resume(self, on_resumed: Callable[[TrainState], None] | None = None) -> Path | None:
        """Load the newest complete checkpoint, if any; return its path."""
        checkpoints = list_checkpoints(self.out_dir)
        if not checkpoints:
            return None
        path = checkpoints[-1][1]
        self.accelerator.load_state(str(path))
        if on_resumed is not None:
            on_resumed(self.state)
        return path
