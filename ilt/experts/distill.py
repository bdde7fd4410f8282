"""Distil LoRA language experts into one student LoRA (language-agnostic use).

The student is an ordinary round's LoRA on the experts' base model, trained by
:func:`ilt.training.loop.train_round` (``ilt experts distill`` is ``ilt train`` with the
experts filled into the loss). Its loss is the ``distill`` loss plugin
(``task.loss: {name: distill, temperature: 2.0, kl_weight: 0.5, cache_dir:
null}``): for each micro-batch ::

    loss = CE(student, labels) + kl_weight * T^2 * KL(softmax(t / T) || softmax(s / T))

``CE`` is exactly the backbone's own loss (the ``ce`` loss); ``s`` and ``t``
are the student's and the teacher's logits at the label positions (the
transcript tokens and the end of text), and the KL is averaged over those
positions. Each cut's teacher is the expert of its language (``Batch.languages``):
the base model with that expert's LoRA, in eval mode, without gradients.
``kl_weight: 0`` is plain cross-entropy (no teacher is loaded). A cut whose
language has no expert trains on the cross-entropy alone (logged once per
language).

Teachers
    One more copy of the base model (the experts' base, ``teacher_model``; by
    default the directory the student's base was loaded from), in the
    student's base dtype and device, holding every expert as a PEFT adapter.
    A micro-batch is split by language and each language's rows go through
    their expert (PEFT ``set_adapter``), so one batch may mix languages. The
    logits are read at the model's output layer (``get_output_embeddings()``,
    a forward hook) while the backbone computes its loss, so the teacher sees
    exactly the inputs the student sees, for any backbone whose logits are
    that layer's output (Whisper, Qwen2-Audio).

Top-k
    ``top_k: null`` (default) compares the full vocabulary distributions.
    ``top_k: K`` keeps the teacher's K largest logits per position: the
    teacher distribution is renormalised over them and compared with the
    student's log-probabilities (over the full vocabulary) at those tokens.

Cache (``cache_dir``)
    Teacher logits at the label positions are written per cut, atomically,
    to ``cache_dir/<lang>-<expert sha256>-<base sha256>-<full|topK>/<sha256 of
    the cut ID>.safetensors`` (``values`` fp32, ``indices`` with top-k, the
    ``labels`` they belong to; the cut ID in the metadata) and read back on
    later steps and epochs: a cut's teacher runs once. The key holds the
    expert's and the base's weight hashes, so a retrained expert never reads
    another's logits; an entry whose cut ID or labels differ (a changed
    transcript) is recomputed and replaced. Full logits take ``4 x vocabulary``
    bytes per token (207 kB for Whisper's 51865 tokens): use ``top_k`` with a
    cache for real corpora. The temperature is applied when reading, so a
    cache serves any temperature.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ilt.backbone import Batch
from ilt.config import ComponentSpec, RoundConfig
from ilt.core.files import atomic_path
from ilt.errors import IltInputError
from ilt.experts.fusion import Expert, load_experts_into, read_experts
from ilt.models.base import first_float_param, unwrap_model
from ilt.models.lineage import model_identity

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from collections.abc import Iterator, Mapping, Sequence

log = logging.getLogger("ilt")

#: Label value ignored by the loss (both backbones and transformers use it).
IGNORE_INDEX = -100
DISTILL_LOSS = "distill"


@contextlib.contextmanager
def captured_logits(model: Any) -> Iterator[list[Any]]:
    """Within the block, the outputs of ``model``'s output layer
    (``get_output_embeddings()``, under any PEFT or DDP wrapper) are appended
    to the yielded list, one per forward pass.

    :raises IltInputError: a model without an output layer.
    """
    base = unwrap_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        raise IltInputError(f"the distill loss reads logits at the output layer, and {type(base).__name__} has "
                            f"none (get_output_embeddings() is None)")
    seen: list[Any] = []
    handle = head.register_forward_hook(lambda _module, _inputs, output: seen.append(output))
    try:
        yield seen
    finally:
        handle.remove()


def sub_batch(batch: Batch, rows: Sequence[int]) -> Batch:
    """The ``rows`` of ``batch``: every tensor whose first dimension is the batch's size is indexed."""
    import torch

    index = torch.tensor(list(rows), dtype=torch.long)
    size = len(batch)
    tensors = {k: (v.index_select(0, index.to(v.device)) if torch.is_tensor(v) and v.dim() and v.shape[0] == size
                   else v) for k, v in batch.tensors.items()}
    languages = [batch.languages[i] for i in rows] if batch.languages else []
    return Batch(tensors, [batch.cut_ids[i] for i in rows], {}, languages)


def _frozen_param(model: Any) -> Any:
    """A frozen floating-point parameter of the student's base (its dtype and device)."""
    base = unwrap_model(model)
    frozen = next((p for p in base.parameters() if p.is_floating_point() and not p.requires_grad), None)
    return frozen if frozen is not None else first_float_param(base)


class Teachers:
    """Every expert on one copy of the base model, loaded on first use."""

    def __init__(self, experts: Mapping[str, str | Path], teacher_model: str | Path | None) -> None:
        self.experts: dict[str, Expert] = {e.language: e for e in read_experts(experts)}
        self.teacher_model = Path(teacher_model) if teacher_model else None
        if self.teacher_model is not None and not self.teacher_model.is_dir():
            raise IltInputError(f"task.loss.teacher_model: {self.teacher_model}: model directory not found")
        self.model: Any = None
        self.base_dir: Path | None = None
        #: cache key of each language's teacher: expert and base weight hashes
        self.keys: dict[str, str] = {}

    @property
    def languages(self) -> list[str]:
        return sorted(self.experts)

    def prepare(self, backbone: Any, student: Any) -> None:
        """Find the base model and each teacher's cache key (weight hashes); once, cheap."""
        if self.keys:
            return
        first = next(iter(self.experts.values()))
        if first.config.backbone.name != backbone.name:
            raise IltInputError(f"{first.adapter_dir}: the experts are LoRAs for backbone "
                                f"{first.config.backbone.name!r}, the student is {backbone.name!r}")
        self.base_dir = self.teacher_model or Path(str(unwrap_model(student).name_or_path))
        base = (model_identity(self.base_dir).get("sha256") or "unhashed")[:12]
        self.keys = {lang: f"{lang}-{(e.sha256 or 'unhashed')[:12]}-{base}" for lang, e in self.experts.items()}

    def load(self, student: Any) -> None:
        """Load the base with every expert, like the student's base (dtype, device); once, on first need."""
        if self.model is not None:
            return
        from ilt.core.registry import create

        first = next(iter(self.experts.values()))
        frozen = _frozen_param(student)
        teacher = create("backbone", first.config.backbone, self.base_dir, dtype=frozen.dtype, device=frozen.device)
        self.model = load_experts_into(teacher.model, list(self.experts.values()))
        log.info("distill: teachers %s on %s (%s)", ", ".join(self.languages), self.base_dir, frozen.dtype)

    def logits(self, backbone: Any, batch: Batch, rows: Sequence[int], language: str) -> Any:
        """The fp32 logits of the expert of ``language`` for ``rows`` of ``batch``
        (rows x positions x vocabulary), without gradients."""
        import torch

        self.model.set_adapter(self.experts[language].name, inference_mode=True)
        with torch.no_grad(), captured_logits(self.model) as seen:
            backbone.loss(self.model, sub_batch(batch, rows))
        return seen[0].float()


class TeacherCache:
    """Teacher logits at the label positions, one safetensors file per cut and teacher."""

    def __init__(self, root: str | Path, top_k: int | None) -> None:
        self.root, self.top_k = Path(root), top_k
        self.hits = self.misses = 0

    def path(self, key: str, cut_id: str) -> Path:
        kind = f"top{self.top_k}" if self.top_k else "full"
        return self.root / f"{key}-{kind}" / f"{hashlib.sha256(cut_id.encode()).hexdigest()[:32]}.safetensors"

    def read(self, key: str, cut_id: str, labels: Any) -> tuple[Any, Any] | None:
        """``(values, indices or None)`` of a cut whose entry matches its ID and labels, else ``None``."""
        import torch
        from safetensors import SafetensorError, safe_open

        path = self.path(key, cut_id)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
        except (OSError, RuntimeError, ValueError, SafetensorError) as exc:  # a damaged entry is recomputed
            log.warning("distill cache: %s unreadable (%s): recomputing it", path, exc)
            tensors, meta = {}, {}
        if meta.get("cut_id") != cut_id or not torch.equal(tensors.get("labels", torch.empty(0)), labels.cpu()):
            self.misses += 1
            return None
        self.hits += 1
        return tensors["values"], tensors.get("indices")

    def write(self, key: str, cut_id: str, labels: Any, values: Any, indices: Any) -> None:
        from safetensors.torch import save_file

        tensors = {"labels": labels.detach().cpu().contiguous(), "values": values.detach().cpu().contiguous()}
        if indices is not None:
            tensors["indices"] = indices.detach().cpu().contiguous()
        with atomic_path(self.path(key, cut_id)) as tmp:
            save_file(tensors, str(tmp), metadata={"cut_id": cut_id, "teacher": key, "top_k": str(self.top_k)})


class DistillLoss:
    """:class:`ilt.components.Loss`: cross-entropy plus the KL to each cut's expert (see the module docstring)."""

    def __init__(self, *, temperature: float, kl_weight: float, cache_dir: str | None, top_k: int | None,
                 experts: Mapping[str, str] | None, teacher_model: str | None) -> None:
        self.temperature, self.kl_weight, self.top_k = temperature, kl_weight, top_k
        self.teachers = Teachers(experts, teacher_model) if experts else None
        self.cache = TeacherCache(cache_dir, top_k) if cache_dir else None
        self._without_teacher: set[str | None] = set()

    def __repr__(self) -> str:
        return (f"DistillLoss(temperature={self.temperature}, kl_weight={self.kl_weight}, top_k={self.top_k}, "
                f"experts={self.teachers.languages if self.teachers else []}, cache={self.cache is not None})")

    def __call__(self, backbone: Any, model: Any, batch: Batch) -> Any:
        if self.kl_weight == 0.0 or self.teachers is None:
            return backbone.loss(model, batch)  # exactly the plain cross-entropy
        with captured_logits(model) as seen:
            ce = backbone.loss(model, batch)
        if not seen:  # no label position in the batch: the backbone ran no forward pass
            return ce
        student = seen[0]
        labels = batch.tensors["labels"].to(student.device)
        if tuple(student.shape[:2]) != tuple(labels.shape):
            raise IltInputError(f"backbone {backbone.name!r}: logits {tuple(student.shape)} do not line up with "
                                f"labels {tuple(labels.shape)}; the distill loss needs one logit row per label")
        mask = labels != IGNORE_INDEX
        targets = self.teacher_targets(backbone, model, batch, labels, mask)
        rows = [i for i, target in enumerate(targets) if target is not None]
        if not rows:
            return ce
        return ce + self.kl_weight * self.temperature ** 2 * self.kl(student, mask, rows, targets)

    def _languages(self, backbone: Any, batch: Batch) -> list[str | None]:
        if len(batch.languages) != len(batch):
            raise IltInputError(f"backbone {backbone.name!r} gives no cut languages (Batch.languages); the distill "
                                f"loss needs them to choose each cut's teacher")
        for language in set(batch.languages) - set(self.teachers.languages) - self._without_teacher:
            self._without_teacher.add(language)
            log.warning("distill: no expert for language %r (experts: %s): its cuts train on cross-entropy only",
                        language, ", ".join(self.teachers.languages))
        return list(batch.languages)

    def teacher_targets(self, backbone: Any, model: Any, batch: Batch, labels: Any,
                        mask: Any) -> list[tuple[Any, Any] | None]:
        """Per row: the teacher's ``(values, indices or None)`` at its label
        positions (from the cache or computed), ``None`` without a teacher."""
        languages = self._languages(backbone, batch)
        self.teachers.prepare(backbone, model)
        targets: list[tuple[Any, Any] | None] = [None] * len(batch)
        todo: dict[str, list[int]] = {}
        for i, language in enumerate(languages):
            if language not in self.teachers.experts or not bool(mask[i].any()):
                continue
            cached = self.cache.read(self.teachers.keys[language], batch.cut_ids[i], labels[i][mask[i]]) \
                if self.cache else None
            if cached is not None:
                targets[i] = tuple(t.to(labels.device) if t is not None else None for t in cached)
            else:
                todo.setdefault(language, []).append(i)
        for language, rows in todo.items():
            self.teachers.load(model)
            logits = self.teachers.logits(backbone, batch, rows, language)
            for j, i in enumerate(rows):
                values, indices = self.reduce(logits[j][mask[i]])
                targets[i] = (values, indices)
                if self.cache:
                    self.cache.write(self.teachers.keys[language], batch.cut_ids[i], labels[i][mask[i]],
                                     values, indices)
        return targets

    def reduce(self, logits: Any) -> tuple[Any, Any]:
        """``(values, indices)`` of the teacher's top-k logits per position, or ``(logits, None)``."""
        import torch

        if not self.top_k:
            return logits, None
        values, indices = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1)
        return values, indices

    def kl(self, student: Any, mask: Any, rows: Sequence[int], targets: Sequence[tuple[Any, Any] | None]) -> Any:
        """``KL(teacher_T || student_T)`` averaged over the label positions of ``rows``."""
        import torch

        s = torch.cat([student[i][mask[i]] for i in rows]).float()
        values = torch.cat([targets[i][0] for i in rows]).to(s.device)
        log_student = torch.log_softmax(s / self.temperature, dim=-1)
        if targets[rows[0]][1] is not None:
            log_student = log_student.gather(-1, torch.cat([targets[i][1] for i in rows]).to(s.device))
        log_teacher = torch.log_softmax(values / self.temperature, dim=-1)
        return (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean()


def with_experts(config: RoundConfig, base_dir: str | Path, experts: Mapping[str, str | Path],
                 where: str | Path = "<round config>") -> RoundConfig:
    """``config`` whose ``distill`` loss names the experts and their base (as
    ``ilt experts distill --experts`` fills them in; saved in ``round.yaml``).

    :param where: the config file, named in errors.
    :raises IltInputError: a config whose loss is not ``distill``.
    """
    spec = config.task.loss
    if spec.name != DISTILL_LOSS:
        raise IltInputError(f"{where}: task.loss is {spec.name!r}; distillation needs {{name: {DISTILL_LOSS}, "
                            f"temperature: 2.0, kl_weight: 0.5}} (see conf/distill.yaml)")
    options = {**spec.options, "experts": {lang: str(path) for lang, path in sorted(experts.items())},
               "teacher_model": str(base_dir)}
    task = dataclasses.replace(config.task, loss=ComponentSpec(spec.name, options))
    return dataclasses.replace(config, task=task)


__all__ = ["DISTILL_LOSS", "DistillLoss", "TeacherCache", "Teachers", "captured_logits", "sub_batch",
           "with_experts"]
