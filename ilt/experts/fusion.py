"""Fuse LoRA language experts into one adapter or one full model (language-agnostic use).

Each expert ``i`` is a LoRA on one base model ``W0`` trained on one language;
its update of a target layer is ``ΔW_i = s_i B_i A_i`` with ``s_i = alpha_i /
r_i`` (``alpha_i / sqrt(r_i)`` with rsLoRA). Fusing with weights ``w_i`` aims
at ``W = W0 + Σ w_i ΔW_i``; the methods differ in how close they get:

=========== ========================== ===================================================
method      result                     exact ``Σ w_i ΔW_i``?
=========== ========================== ===================================================
full        a full model               yes: computed on the weights themselves (fp64), the
                                       reference the others are tested against
cat         an adapter of rank Σ r_i   yes: ``A = [w_i s_i A_i]`` stacked, ``B = [B_i]``
svd         an adapter of rank R       yes when R covers the update's rank (the default
                                       R = min(Σ r_i, smallest layer width)); a smaller
                                       ``--svd-rank`` keeps the R largest singular values
linear      an adapter of rank r       no: A and B are mixed separately
                                       (``A = Σ sqrt(w_i s_i) A_i``, same for B), so
                                       ``BA`` holds cross terms ``B_i A_j``; one rank needed
ties        an adapter of rank r       no: like linear, after pruning each A and B to its
                                       ``density`` largest entries and a sign election
dare_ties   an adapter of rank r       no: random drop (``density`` kept, rescaled) then
                                       TIES; reproducible through ``seed``
=========== ========================== ===================================================

Every method but ``full`` is PEFT's ``add_weighted_adapter`` (``combination_type``
of the same name); ``tests/test_fusion.py`` checks the exactness column
numerically. An adapter result is an adapter directory (:mod:`ilt.models.adapter`:
``round.yaml`` names the backbone, so ``ilt merge`` and ``ilt decode --adapter``
take it) plus ``fusion.json``; ``merged=True`` (and ``full`` always) writes a
full model with ``lineage.json`` (its ``fusion`` entry says how it was made)
and a model card, as ``ilt merge`` does. Outputs are written atomically.

Weights: one per expert language, finite and non-negative, not all zero
(default: equal, ``1/n`` each, so the fused update is the experts' mean). They
need not sum to 1 (a sum is task arithmetic); a sum other than 1 is logged.
Experts of weight 0 are left out of the fusion.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from collections.abc import Mapping

from ilt.config import LoraSection, RoundConfig
from ilt.core.files import (
    atomic_dir,
    read_json,
    remove_stale_temporaries,
    write_json_atomic,
)
from ilt.errors import IltInputError
from ilt.models.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_provenance,
    load_adapters,
    resolve_adapter_dir,
    write_adapter_files,
)
from ilt.models.base import stored_dtype
from ilt.models.lid import LID_FILE
from ilt.models.lineage import merge_lineage, model_identity, write_lineage
from ilt.models.modelcard import with_hours, write_card

log = logging.getLogger("ilt")

#: PEFT ``add_weighted_adapter`` combination types offered here.
PEFT_METHODS = ("cat", "svd", "linear", "ties", "dare_ties")
#: Every fusion method; ``full`` is the exact merge on the weights.
METHODS = (*PEFT_METHODS, "full")
#: Methods that need experts of one rank (PEFT mixes A and B entry-wise).
SAME_RANK_METHODS = ("linear", "ties", "dare_ties")
#: Methods that prune, with their default density.
DENSITY_METHODS = ("ties", "dare_ties")
DEFAULT_DENSITY = 0.5
FUSION_JSON = "fusion.json"
#: The fused adapter's name inside the PEFT model (saved at the directory's top level).
FUSED = "default"
_PREFIX = "base_model.model."


@dataclass
class Expert:
    """One expert: its language, adapter directory, round config and PEFT config."""

    language: str
    adapter_dir: Path
    config: RoundConfig
    peft: dict[str, Any]
    sha256: str | None
    #: ``manifests.json`` entries of the data it was trained on
    data: list[dict[str, Any]]
    dev_score: dict[str, Any] | None

    @property
    def rank(self) -> int:
        return int(self.peft["r"])

    @property
    def scale(self) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA): the factor of ``B A``."""
        alpha, r = float(self.peft["lora_alpha"]), self.rank
        return alpha / math.sqrt(r) if self.peft.get("use_rslora") else alpha / r

    @property
    def targets(self) -> list[str]:
        """The adapted module names (``target_modules``; a regex string stays one entry)."""
        targets = self.peft.get("target_modules") or []
        return [targets] if isinstance(targets, str) else list(targets)

    @property
    def name(self) -> str:
        """The expert's adapter name inside a PEFT model."""
        return f"expert_{self.language}"


# --------------------------------------------------------------------------- inputs


def read_experts(experts: Mapping[str, str | Path]) -> list[Expert]:
    """The experts ``{language: adapter directory}``, checked: LoRA adapters of
    one backbone, without what fusion cannot combine.

    :raises IltInputError: no experts, a missing adapter, another backbone, a
        LoRA with trained biases, DoRA, rank or alpha patterns, or language-ID
        embeddings; the message names the directory.
    """
    if not experts:
        raise IltInputError("no experts to fuse; train them with `ilt experts train`")
    out = []
    for language, path in sorted(experts.items()):
        adapter_dir = resolve_adapter_dir(path)
        provenance = adapter_provenance(adapter_dir)
        peft = read_json(adapter_dir / ADAPTER_CONFIG) or {}
        problem = _unsupported(peft, adapter_dir)
        if problem:
            raise IltInputError(f"{adapter_dir / ADAPTER_CONFIG}: expert {language!r}: {problem}")
        out.append(Expert(language, adapter_dir, provenance["config"], peft, provenance["sha256"],
                          list(provenance["data"] or []), provenance["dev_score"]))
    backbones = {e.config.backbone.name for e in out}
    if len(backbones) > 1:
        raise IltInputError("experts of different backbones cannot be fused: " + ", ".join(
            f"{e.language} ({e.config.backbone.name})" for e in out))
    return out


def _unsupported(peft: dict[str, Any], adapter_dir: Path) -> str | None:
    """Why an adapter config cannot be fused, or ``None``."""
    if peft.get("peft_type") != "LORA":
        return f"not a LoRA adapter (peft_type {peft.get('peft_type')!r})"
    checks = [
        (peft.get("bias", "none") != "none", (f"trains biases (lora.bias: {peft.get('bias')}); fusion combines "
                                              f"only the LoRA matrices: train experts with bias: none")),
        (peft.get("use_dora"), "is a DoRA adapter; fusion combines plain LoRA only"),
        (peft.get("rank_pattern") or peft.get("alpha_pattern"),
         "has rank_pattern or alpha_pattern; fusion needs one rank and alpha per adapter"),
        (peft.get("fan_in_fan_out"), "has fan_in_fan_out; fusion supports Linear layers only"),
        (peft.get("modules_to_save"), "has modules_to_save; fusion combines LoRA matrices only"),
        ((adapter_dir / LID_FILE).is_file(), (f"carries language-ID embeddings ({LID_FILE}); they are not "
                                              f"fusable LoRA weights: train experts with lid_embeddings: false")),
    ]
    return next((why for bad, why in checks if bad), None)


def parse_weight_spec(spec: str | None) -> dict[str, float] | None:
    """``en=0.5,de=0.5`` as ``{"en": 0.5, "de": 0.5}`` (``None``: equal weights)."""
    if spec is None or not spec.strip():
        return None
    weights: dict[str, float] = {}
    for item in spec.split(","):
        language, sep, value = item.partition("=")
        language = language.strip()
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not language or number is None:
            raise IltInputError(f"--weights {spec!r}: {item.strip()!r} is not LANG=NUMBER; write e.g. en=0.5,de=0.5")
        if language in weights:
            raise IltInputError(f"--weights {spec!r}: language {language!r} given twice")
        weights[language] = number
    return weights


def fusion_weights(languages: list[str], weights: Mapping[str, float] | None) -> dict[str, float]:
    """One weight per expert language: ``weights`` checked, or equal weights.

    :raises IltInputError: a language without an expert, an expert without a
        weight, a negative or non-finite weight, or all weights zero.
    """
    if weights is None:
        return {language: 1.0 / len(languages) for language in languages}
    unknown = sorted(set(weights) - set(languages))
    if unknown:
        raise IltInputError(f"--weights: no expert for language(s) {', '.join(unknown)}; the experts are "
                            f"{', '.join(languages)}")
    missing = [language for language in languages if language not in weights]
    if missing:
        raise IltInputError(f"--weights: no weight for expert(s) {', '.join(missing)}; give every expert a "
                            f"weight (0 leaves one out)")
    bad = {k: v for k, v in weights.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise IltInputError(f"--weights: weights must be finite and non-negative, got {bad}")
    total = sum(weights.values())
    if total <= 0:
        raise IltInputError("--weights: every weight is 0; give at least one expert a positive weight")
    if abs(total - 1.0) > 1e-6:
        log.info("fusion weights sum to %.4g, not 1: the fused update is a weighted sum, not a mean", total)
    return {language: float(weights[language]) for language in languages}


def check_method(method: str, experts: list[Expert], density: float | None,
                 svd_rank: int | None) -> tuple[float | None, int | None]:
    """``(density, svd_rank)`` for ``method`` with its defaults filled in.

    :raises IltInputError: an unknown method, an option the method does not
        use, a density outside ``(0, 1]``, a rank below 1, or experts of
        different ranks for a method that needs one rank.
    """
    if method not in METHODS:
        raise IltInputError(f"unknown fusion method {method!r}; use one of {', '.join(METHODS)}")
    if density is not None and method not in DENSITY_METHODS:
        raise IltInputError(f"--density applies to {' and '.join(DENSITY_METHODS)} only, not {method}")
    if svd_rank is not None and method != "svd":
        raise IltInputError(f"--svd-rank applies to --method svd only, not {method}")
    if method in DENSITY_METHODS:
        density = DEFAULT_DENSITY if density is None else float(density)
        if not 0.0 < density <= 1.0:
            raise IltInputError(f"--density {density}: must be in (0, 1] (the fraction of entries kept)")
    if svd_rank is not None and svd_rank < 1:
        raise IltInputError(f"--svd-rank {svd_rank}: must be at least 1")
    ranks = {e.rank for e in experts}
    if method in SAME_RANK_METHODS and len(ranks) > 1:
        raise IltInputError(f"--method {method} needs experts of one LoRA rank, got "
                            + ", ".join(f"{e.language} r={e.rank}" for e in experts)
                            + "; use cat or svd, which take any ranks")
    return density, svd_rank


# --------------------------------------------------------------------------- the exact reference


def full_deltas(experts: list[Expert], weights: Mapping[str, float], base: Mapping[str, Any]) -> dict[str, Any]:
    """``{base weight key: Σ w_i s_i B_i A_i}`` (fp64), read from each expert's
    ``adapter_model.safetensors``: the exact fused update, for the layers
    any expert adapts.

    :param base: the base model's state dict (for names and shapes).
    :raises IltInputError: a tensor that is not a LoRA matrix of a layer of ``base``.
    """
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    deltas: dict[str, Any] = {}
    for expert in tqdm(experts, desc="fuse (full)", unit="expert", disable=None):
        path = expert.adapter_dir / ADAPTER_WEIGHTS
        tensors = load_file(path)
        for key, a in tensors.items():
            if key.endswith(".lora_B.weight"):
                continue
            if not (key.startswith(_PREFIX) and key.endswith(".lora_A.weight")):
                raise IltInputError(f"{path}: {key} is not a LoRA matrix of a Linear layer; it cannot be fused")
            module = key[len(_PREFIX):-len(".lora_A.weight")]
            b = tensors.get(f"{_PREFIX}{module}.lora_B.weight")
            target = base.get(f"{module}.weight")
            if b is None or target is None or tuple(target.shape) != (b.shape[0], a.shape[1]):
                raise IltInputError(f"{path}: {module}: no matching lora_B or base layer of that shape; was this "
                                    f"expert trained on this base model?")
            update = (b.double() @ a.double()) * (weights[expert.language] * expert.scale)
            name = f"{module}.weight"
            deltas[name] = deltas[name] + update if name in deltas else update
    return deltas


def apply_full(model: Any, experts: list[Expert], weights: Mapping[str, float]) -> int:
    """Add the exact fused update to ``model``'s weights in place (fp64 sums,
    stored in each weight's dtype); return the number of layers changed."""
    import torch

    state = model.state_dict()
    deltas = full_deltas(experts, weights, state)
    with torch.no_grad():
        for key, delta in deltas.items():
            state[key].copy_((state[key].double() + delta).to(state[key].dtype))
    return len(deltas)


# --------------------------------------------------------------------------- PEFT's methods


def _layer_widths(model: Any, targets: set[str]) -> int:
    """The smallest ``min(in, out)`` over the Linear layers (PEFT-wrapped or
    not) whose leaf name is in ``targets``."""
    from torch import nn

    widths = [min(m.in_features, m.out_features) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n.removesuffix(".base_layer").rsplit(".", 1)[-1] in targets]
    return min(widths) if widths else 0


def load_experts_into(base_model: Any, experts: list[Expert]) -> Any:
    """A PEFT model over ``base_model`` holding every expert (adapter name
    ``expert_<lang>``), frozen, in eval mode (:func:`ilt.models.adapter.load_adapters`).

    :raises IltInputError: an adapter that does not fit the base model.
    """
    return load_adapters(base_model, {e.name: e.adapter_dir for e in experts},
                         labels={e.name: f"expert {e.language!r}" for e in experts}, progress="load experts")


def fused_rank(model: Any, experts: list[Expert], method: str, svd_rank: int | None) -> int:
    """The rank of the fused adapter: Σ r_i (cat), the requested or covering rank (svd), else r."""
    if method == "cat":
        return sum(e.rank for e in experts)
    if method != "svd":
        return experts[0].rank
    targets = {t for e in experts for t in e.targets}
    width = _layer_widths(model, {t.rsplit(".", 1)[-1] for t in targets})
    covering = min(sum(e.rank for e in experts), width) if width else sum(e.rank for e in experts)
    if svd_rank is None:
        return covering
    if width and svd_rank > width:
        raise IltInputError(f"--svd-rank {svd_rank}: above the smallest adapted layer's width {width}; "
                            f"{covering} already gives the exact fusion")
    return svd_rank


def peft_fusion(model: Any, experts: list[Expert], weights: Mapping[str, float], method: str, *,
                density: float | None, svd_rank: int | None, seed: int) -> int:
    """Add the fused adapter :data:`FUSED` to ``model`` (a PEFT model holding
    ``experts``, :func:`load_experts_into`) with PEFT's ``add_weighted_adapter``,
    leave it the only adapter (frozen) and return its rank."""
    import torch
    from peft.tuners.lora import LoraLayer

    rank = fused_rank(model, experts, method, svd_rank)
    options: dict[str, Any] = {"density": density} if method in DENSITY_METHODS else {}
    if method == "svd":
        options["svd_rank"] = rank
    with torch.random.fork_rng(devices=[]):  # dare_ties drops at random: reproducible by seed
        torch.manual_seed(seed)
        model.add_weighted_adapter([e.name for e in experts], [weights[e.language] for e in experts], FUSED,
                                   combination_type=method, **options)
    # PEFT gives the new adapter alpha = r (scale 1) but copies the first expert's
    # use_rslora, which would scale it by sqrt(r): keep the scale 1 the weights assume
    config = model.peft_config[FUSED]
    if config.use_rslora:
        config.use_rslora = False
        for module in model.modules():
            if isinstance(module, LoraLayer) and FUSED in module.scaling:
                module.scaling[FUSED] = 1.0
    model.set_adapter(FUSED, inference_mode=True)
    for expert in experts:
        model.delete_adapter(expert.name)
    return rank


# --------------------------------------------------------------------------- outputs


def fused_round(experts: list[Expert], method: str, rank: int) -> RoundConfig:
    """The round config saved with a fusion: the first expert's, named
    ``fusion-<method>``, with the fused LoRA's shape (rank ``rank``, scale 1,
    the union of the experts' targets) and every expert's training data."""
    first = experts[0].config
    targets = sorted({t for e in experts for t in e.targets})
    lora = LoraSection(r=rank, lora_alpha=float(rank), lora_dropout=first.lora.lora_dropout, target_modules=targets)
    data = [source for e in experts for source in e.config.task.data]
    return dataclasses.replace(first, name=f"fusion-{method}", lora=lora,
                               task=dataclasses.replace(first.task, data=data))


def fusion_record(base_dir: Path, experts: list[Expert], weights: Mapping[str, float], method: str, rank: int,
                  exact: bool, density: float | None, svd_rank: int | None, seed: int) -> dict[str, Any]:
    """What ``fusion.json`` (and the ``fusion`` entry of ``lineage.json``) says."""
    return {
        "method": method,
        "exact": exact,
        "rank": rank,
        "weights": dict(weights),
        "density": density,
        "svd_rank": svd_rank if method == "svd" else None,
        "seed": seed if method == "dare_ties" else None,
        "base": model_identity(base_dir),
        "experts": [{"language": e.language, "round": e.config.name, "sha256": e.sha256, "r": e.rank,
                     "lora_alpha": e.peft.get("lora_alpha"), "use_rslora": bool(e.peft.get("use_rslora")),
                     "dev_score": {k: (e.dev_score or {}).get(k) for k in ("metric", "value", "step")}}
                    for e in experts],
    }


def _check_out(out_dir: Path, inputs: list[Path], overwrite: bool) -> None:
    if out_dir.resolve() in {p.resolve() for p in inputs}:
        raise IltInputError(f"{out_dir}: the output must be a new directory, not an input of the fusion")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise IltInputError(f"{out_dir}: exists and is not empty; choose another --out or pass --overwrite")


def write_fused_model(backbone: Any, model: Any, base_dir: Path, out_dir: Path, config: RoundConfig,
                      experts: list[Expert], record: dict[str, Any]) -> Path:
    """A full model directory, as ``ilt merge`` writes one: weights (in the
    base's saved dtype), processor, ``lineage.json`` (with ``fusion``),
    ``fusion.json`` and the model card, atomically."""
    model.eval()
    stored = stored_dtype(base_dir)
    if stored is not None:
        model.to(stored)
    lineage = merge_lineage(config, base=record["base"], parent_dir=base_dir,
                            adapter={"round": config.name, "step": None, "sha256": None},
                            data=with_hours([d for e in experts for d in e.data]), dev_score=None,
                            fusion=record)
    with atomic_dir(out_dir) as tmp:
        backbone.save(model, tmp)
        write_lineage(tmp, lineage, name=out_dir.resolve().name, source=f"ilt experts fuse ({record['method']})")
        write_json_atomic(tmp / FUSION_JSON, record)
        write_card(tmp, name=out_dir.resolve().name)
    return out_dir


def write_fused_adapter(model: Any, out_dir: Path, config: RoundConfig, experts: list[Expert],
                        record: dict[str, Any]) -> Path:
    """An adapter directory (:mod:`ilt.models.adapter`) holding the fused LoRA, plus ``fusion.json``, atomically."""
    languages = ", ".join(f"{e.language} {record['weights'][e.language]:g}" for e in experts)
    score = {"step": None, "note": f"fused ({record['method']}) from experts {languages}: not scored"}
    with atomic_dir(out_dir) as tmp:
        write_adapter_files(model, tmp, config, [d for e in experts for d in e.data], score)
        write_json_atomic(tmp / FUSION_JSON, record)
    return out_dir


def fuse_experts(base_dir: str | Path, experts: Mapping[str, str | Path], out_dir: str | Path, *,
                 method: str = "cat", weights: Mapping[str, float] | None = None, density: float | None = None,
                 svd_rank: int | None = None, merged: bool = False, seed: int = 0,
                 overwrite: bool = False) -> Path:
    """Fuse the LoRA experts ``{language: adapter dir}`` trained on ``base_dir``
    into one adapter (default) or, with ``merged`` (and always for ``full``),
    one full model in ``out_dir``; return ``out_dir``. See the module docstring
    for the methods, their exactness and the weights. Runs in fp32 on the CPU.

    :param weights: ``{language: weight}`` for every expert (default equal).
    :param density: fraction of entries kept by ``ties`` and ``dare_ties`` (default 0.5).
    :param svd_rank: rank of the ``svd`` result (default: the rank that makes it exact).
    :param seed: the random drop of ``dare_ties``.
    :param overwrite: replace an existing non-empty ``out_dir``.
    :raises IltInputError: bad experts, weights, method or options, or an output that is an input.
    """
    import torch

    from ilt.core.registry import create

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if not base_dir.is_dir():
        raise IltInputError(f"{base_dir}: base model directory not found")
    found = read_experts(experts)
    density, svd_rank = check_method(method, found, density, svd_rank)
    phis = fusion_weights([e.language for e in found], weights)
    _check_out(out_dir, [base_dir, *(e.adapter_dir for e in found)], overwrite)
    kept = [e for e in found if phis[e.language] > 0]
    backbone = create("backbone", found[0].config.backbone, base_dir, dtype=torch.float32, device="cpu")
    if method == "full":
        rank = sum(e.rank for e in kept)
        layers = apply_full(backbone.model, kept, phis)
        model, exact = backbone.model, True
        log.info("fused %d expert(s) into %d layer(s) of %s (exact)", len(kept), layers, base_dir)
    else:
        peft_model = load_experts_into(backbone.model, kept)
        covering = fused_rank(peft_model, kept, "svd", None)
        rank = peft_fusion(peft_model, kept, phis, method, density=density, svd_rank=svd_rank, seed=seed)
        exact = len(kept) == 1 or method == "cat" or (method == "svd" and rank >= covering)
        model = peft_model.merge_and_unload(safe_merge=True, adapter_names=[FUSED]) if merged else peft_model
    record = fusion_record(base_dir, kept, phis, method, rank, exact, density, svd_rank, seed)
    record["weights"] = phis  # every expert's, the left-out ones at 0
    config = fused_round(kept, method, rank)
    remove_stale_temporaries(out_dir)  # a killed fusion's partial copy
    if method == "full" or merged:
        write_fused_model(backbone, model, base_dir, out_dir, config, kept, record)
    else:
        write_fused_adapter(model, out_dir, config, kept, record)
    log.info("fused experts %s (%s) -> %s", ", ".join(e.language for e in kept), method, out_dir)
    return out_dir


__all__ = ["FUSION_JSON", "METHODS", "PEFT_METHODS", "Expert", "apply_full", "check_method", "full_deltas",
           "fuse_experts", "fusion_weights", "load_experts_into", "parse_weight_spec", "peft_fusion", "read_experts"]
