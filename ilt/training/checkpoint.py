"""A round's resumable training state and its atomic checkpoints.

``checkpoints/step-N/`` holds, with no pickle anywhere (a pickle runs code
when it is loaded, and checkpoints may come from someone else)::

    adapter/                 a complete adapter directory (:mod:`ilt.models.adapter`:
                             LoRA weights, round.yaml, manifests.json, score.json =
                             {"step": N}), mergeable and decodable like best/
    state.json               the optimiser, scheduler, gradient scaler and
                             :class:`TrainState` (counters, sampler position) as
                             typed JSON; their tensors in state.safetensors
    rng_state_<rank>.json    each process's Python, NumPy and torch RNG states
                             (+ .safetensors for the torch generator states)

The full model is never saved. Nothing is registered with Accelerate's
``save_state``, which pickles (``custom_checkpoint_N.pkl``, ``optimizer.bin``,
``random_states_N.pkl``) and unpickles with ``weights_only=False``; resuming
reads only the files above, so a ``.pkl`` planted in a checkpoint is never
opened. A checkpoint of an older version (pickles, no ``state.json``) is
refused with one line naming it, unless ``ILT_ALLOW_PICKLE_CHECKPOINTS=1``,
which loads it through Accelerate as before.

A checkpoint is written under a temporary name and renamed when complete; the
last :data:`KEEP_CHECKPOINTS` are kept. Resuming restores the sampler to the
last *consumed* batch, so a resumed run ends with the adapter an uninterrupted
run would have (bitwise on CPU).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from ilt.config import RoundConfig
from ilt.core.files import recover_replaced_dir, replace_dir
from ilt.errors import IltInputError
from ilt.models import lid
from ilt.models.adapter import ADAPTER_WEIGHTS, CHECKPOINT_ADAPTER, write_adapter_files

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
_CKPT_NAME = re.compile(r"^step-(\d+)$")
log = logging.getLogger(__name__)


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
    a SIGKILL gives no chance to clean up, and they are never read; and
    repair a directory swap (``best/``, ``final/``, ``step-N/``) a kill
    interrupted (:func:`ilt.core.files.recover_replaced_dir`)."""
    out_dir = Path(out_dir)
    for old in [*out_dir.glob(".*.old"), *(out_dir / CHECKPOINTS).glob(".*.old")]:
        name = old.name[1:-len(".old")].rpartition(".")[0]  # .NAME.XXXXXX.old
        if name and old.is_dir():
            recover_replaced_dir(old.parent / name)
    stale = [p for p in [*out_dir.glob(".*.tmp"), *(out_dir / CHECKPOINTS).glob(".step-*.tmp")] if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


#: What a run's checkpoints were trained from (:func:`check_run_inputs`), in ``out_dir``.
RUN_INPUTS = "run_inputs.json"


def run_inputs(model_dir: str | Path, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The base model's identity (name and weights sha256, see
    :func:`ilt.models.lineage.model_identity`) and each manifest's role, path and sha256."""
    from ilt.models.lineage import model_identity

    identity = model_identity(model_dir)
    return {"base_model": {"name": identity.get("name"), "sha256": identity.get("sha256")},
            "manifests": [{"role": m.get("role"), "cuts": m.get("cuts"), "sha256": m.get("sha256")}
                          for m in manifests]}


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two :func:`run_inputs`, in words."""
    changed = []
    before, now = old.get("base_model") or {}, new["base_model"]
    if before.get("sha256") != now["sha256"] or (now["sha256"] is None and before.get("name") != now["name"]):
        changed.append(f"base model {before.get('name')} (sha256 {before.get('sha256')}) is now {now['name']} "
                       f"(sha256 {now['sha256']})")
    old_manifests = {(m.get("role"), m.get("cuts")): m.get("sha256") for m in old.get("manifests") or []}
    new_manifests = {(m["role"], m["cuts"]): m["sha256"] for m in new["manifests"]}
    for key in sorted(set(old_manifests) | set(new_manifests), key=str):
        if old_manifests.get(key, "absent") != new_manifests.get(key, "absent"):
            changed.append(f"{key[0]} manifest {key[1]} sha256 {str(old_manifests.get(key, 'absent'))[:12]} is now "
                           f"{str(new_manifests.get(key, 'absent'))[:12]}")
    return changed


def check_run_inputs(out_dir: str | Path, model_dir: str | Path, manifests: list[dict[str, Any]],
                     is_main: bool) -> None:
    """Resume only onto the same base model and data: when ``out_dir`` holds
    checkpoints, the base model's weight hash and every manifest's sha256 must
    be those recorded in ``run_inputs.json`` when they were trained (the
    config is compared by ``round.yaml``); else one line names what changed.
    A fresh run (no checkpoint) records them (main process).

    :raises IltInputError: ``"OUT: holds checkpoints trained on other inputs:
        base model ... is now ...; ..."``.
    """
    from ilt.core.files import read_json, write_json_atomic

    out_dir = Path(out_dir)
    new = run_inputs(model_dir, manifests)
    old = read_json(out_dir / RUN_INPUTS) if list_checkpoints(out_dir) else None
    if isinstance(old, dict):
        changed = _changes(old, new)
        if changed:
            raise IltInputError(f"{out_dir}: holds checkpoints trained on other inputs: {'; '.join(changed)}; "
                                f"resume with the same model and data, or use another output directory (or "
                                f"remove {out_dir / CHECKPOINTS} to start again)")
        return
    if old is None and list_checkpoints(out_dir):
        log.warning("%s: checkpoints of an older ilt version, without %s: the base model and data they were "
                    "trained on cannot be compared", out_dir, RUN_INPUTS)
    if is_main:
        write_json_atomic(out_dir / RUN_INPUTS, new)


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
        self.stale_evals = 0     # dev evaluations in a row without a new best (select.patience)
        self.stopped_early: int | None = None  # the step early stopping ended the round at
        # the incoming model's dev score (select.include_start), kept apart from the trained
        # checkpoints' best: it competes for best/ at the end, not in the patience
        self.start_metric: float | None = None
        self.start_score: dict[str, Any] | None = None
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
            "last_eval": self.last_eval, "stale_evals": self.stale_evals, "stopped_early": self.stopped_early,
            "start_metric": self.start_metric, "start_score": self.start_score,
            "skipped": self.skipped, "sampler": self.sampler_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        sd = dict(sd)
        self.sampler.load_state_dict(sd.pop("sampler"))  # fast-forwards to the saved position
        for key, value in sd.items():
            setattr(self, key, value)


#: The opt-in that lets a checkpoint of an older version (pickle files) be loaded.
ALLOW_PICKLE = "ILT_ALLOW_PICKLE_CHECKPOINTS"
STATE_JSON, STATE_TENSORS = "state.json", "state.safetensors"
#: The version of ``state.json``'s layout.
STATE_FORMAT = 1


def _pickles_allowed() -> bool:
    return os.environ.get(ALLOW_PICKLE, "").strip().lower() in ("1", "true", "yes", "on")


def encode_state(obj: Any, tensors: dict[str, Any], where: str = "state") -> Any:
    """A state dict as JSON-able data: tensors are moved into ``tensors`` (for
    safetensors) and replaced by ``{"__tensor__": key}``; tuples, NumPy arrays
    and dicts with non-string keys are tagged so :func:`decode_state` gives
    back the same types (optimisers, RNGs and samplers check them)."""
    import numpy as np
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, where) for v in obj]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"__items__": [[encode_state(k, tensors, where), encode_state(v, tensors, f"{where}.{k}")]
                              for k, v in obj.items()]}
    raise TypeError(f"{where}: cannot save a {type(obj).__name__} in a checkpoint without pickle")


def decode_state(obj: Any, tensors: dict[str, Any]) -> Any:
    """The inverse of :func:`encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        import numpy as np

        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {decode_state(k, tensors): decode_state(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_state(v, tensors) for k, v in obj.items()}


def _write_state(directory: Path, stem: str, state: dict[str, Any]) -> None:
    """``STEM.json`` (+ ``STEM.safetensors`` when there are tensors)."""
    import json

    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    doc = encode_state(state, tensors, stem)
    if tensors:
        save_file(tensors, str(directory / f"{stem}.safetensors"))
    (directory / f"{stem}.json").write_text(json.dumps(doc, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_state(directory: Path, stem: str) -> dict[str, Any]:
    """What :func:`_write_state` wrote (safetensors and JSON only: no pickle)."""
    from safetensors.torch import load_file

    from ilt.core.files import read_json

    doc = read_json(directory / f"{stem}.json")
    if doc is None:
        raise IltInputError(f"{directory}: checkpoint has no {stem}.json (incomplete: delete this checkpoint)")
    tensor_file = directory / f"{stem}.safetensors"
    try:
        tensors = load_file(str(tensor_file)) if tensor_file.is_file() else {}
        return decode_state(doc, tensors)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise IltInputError(f"{directory / stem}.*: cannot read checkpoint state: {type(exc).__name__}: {exc} "
                            f"(delete this checkpoint to resume from the one before)") from None


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states."""
    import random

    import numpy as np
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _legacy_files(path: Path) -> list[str]:
    """The pickle files Accelerate's ``save_state`` wrote into a checkpoint of an older version."""
    return sorted(p.name for p in path.iterdir() if p.suffix in (".pkl", ".bin", ".pt"))


class Checkpointer:
    """Saves and restores a run's checkpoints (see the module docstring).

    :param manifests: the run's ``manifests.json`` content, copied into each
        checkpoint's adapter directory.
    :param model: the prepared model (its LoRA is saved); ``optimizer`` the
        prepared optimiser; ``scheduler`` the learning-rate scheduler.
    """

    def __init__(self, accelerator: Any, out_dir: Path, config: RoundConfig, manifests: list[dict[str, Any]] | None,
                 state: TrainState, *, model: Any, optimizer: Any, scheduler: Any) -> None:
        self.accelerator, self.out_dir, self.config = accelerator, out_dir, config
        self.manifests, self.state = manifests, state
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def _load_adapter(self, models: list[Any], input_dir: str) -> None:
        """Load each model's LoRA (and LID embeddings) from the checkpoint's
        adapter directory (safetensors); doubles as Accelerate's load hook for
        an opted-in checkpoint of an older version."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        for i, model in enumerate(models):
            name = CHECKPOINT_ADAPTER if i == 0 else f"{CHECKPOINT_ADAPTER}_{i}"
            path = os.path.join(input_dir, name, ADAPTER_WEIGHTS)
            if not os.path.isfile(path):
                raise IltInputError(f"{input_dir}: checkpoint has no adapter weights ({path})")
            result = set_peft_model_state_dict(self.accelerator.unwrap_model(model), load_file(path))
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise IltInputError(f"{path}: adapter weights do not fit this LoRA: {unexpected[:3]}")
            lid.load_weights(self.accelerator.unwrap_model(model), os.path.dirname(path))
        models.clear()

    def _write(self, directory: Path) -> None:
        """Write one checkpoint's files into ``directory`` (every process its RNG states)."""
        from ilt.training.sharding import full_optimizer_state, full_state_dict

        accelerator = self.accelerator
        # sharded parameters (FSDP, ZeRO-3): gathered on every process, written by the main one
        model_state = full_state_dict(accelerator, self.model)
        optimizer_state = full_optimizer_state(accelerator, self.model, self.optimizer)
        if accelerator.is_main_process:
            adapter = directory / CHECKPOINT_ADAPTER
            adapter.mkdir(parents=True, exist_ok=True)
            write_adapter_files(accelerator.unwrap_model(self.model), adapter, self.config, self.manifests,
                                {"step": self.state.step, "checkpoint": True}, model_state)
            scaler = getattr(accelerator, "scaler", None)
            _write_state(directory, "state", {
                "format": STATE_FORMAT, "accelerator_step": accelerator.step,
                "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "train_state": self.state.state_dict()})
        _write_state(directory, f"rng_state_{accelerator.process_index}", rng_state())

    def save(self, step: int) -> None:
        """``checkpoints/step-N``: written under a temporary name, then renamed;
        the last :data:`KEEP_CHECKPOINTS` are kept."""
        accelerator = self.accelerator
        root = self.out_dir / CHECKPOINTS
        final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        try:
            self._write(tmp)
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

    def _load(self, path: Path) -> None:
        """Restore everything from a checkpoint of this version, in the order
        Accelerate did: the LoRA, the optimiser, the RNG states, the
        scheduler, the training state (which fast-forwards the sampler)."""
        accelerator = self.accelerator
        stray = _legacy_files(path)
        if stray:
            log.warning("%s: ignoring %s (pickle files are never opened)", path, ", ".join(stray))
        state = _read_state(path, "state")
        if state.get("format") != STATE_FORMAT:
            raise IltInputError(f"{path / STATE_JSON}: checkpoint format {state.get('format')!r} is not "
                                f"{STATE_FORMAT}; delete {path.parent} to start the round again")
        from ilt.training.sharding import load_full_adapter, load_full_optimizer_state

        if not load_full_adapter(self.model, path / CHECKPOINT_ADAPTER / ADAPTER_WEIGHTS):
            self._load_adapter([self.model], str(path))
        load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
        rng_stem = f"rng_state_{accelerator.process_index}"
        if (path / f"{rng_stem}.json").is_file():
            set_rng_state(_read_state(path, rng_stem))
        else:  # another number of processes: as Accelerate did, go on without
            log.warning("%s: no %s.json; the random states are not restored", path, rng_stem)
        self.scheduler.load_state_dict(state["scheduler"])
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        self.state.load_state_dict(state["train_state"])
        accelerator.step = state["accelerator_step"]

    def _load_legacy(self, path: Path, pickles: list[str]) -> None:
        """A checkpoint of an older version (Accelerate's pickles): refused,
        or loaded through Accelerate when ``ILT_ALLOW_PICKLE_CHECKPOINTS=1``."""
        if not pickles:
            raise IltInputError(f"{path}: checkpoint has no {STATE_JSON} (incomplete or not written by ilt); "
                                f"delete {path} to resume from the one before, or {path.parent} to start again")
        if not _pickles_allowed():
            raise IltInputError(
                f"{path}: checkpoint of an older ilt version holds pickle files ({', '.join(pickles[:3])}), "
                f"which can run code when loaded; delete {path.parent} to start the round again, or set "
                f"{ALLOW_PICKLE}=1 to load it if you trust whoever wrote it")
        log.warning("%s: loading pickle files (%s=1)", path, ALLOW_PICKLE)
        accelerator = self.accelerator
        accelerator.register_load_state_pre_hook(self._load_adapter)
        accelerator.register_for_checkpointing(self.scheduler, self.state)
        accelerator.load_state(str(path))

    def resume(self, on_resumed: Callable[[TrainState], None] | None = None) -> Path | None:
        """Load the newest complete checkpoint, if any; return its path."""
        checkpoints = list_checkpoints(self.out_dir)
        if not checkpoints:
            return None
        path = checkpoints[-1][1]
        if (path / STATE_JSON).is_file():
            self._load(path)
        else:
            self._load_legacy(path, _legacy_files(path))
        if on_resumed is not None:
            on_resumed(self.state)
        return path
