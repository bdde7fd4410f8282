"""Pseudo-labels by N-model voting (the ILT paper, section 2.3): ``ilt pseudo-label``.

N models decode the same unlabelled cuts through :func:`ilt.asr.decode.decode_files`
(with confidence scores); a voter plugin (``majority``, ``rover``, or any
registered one) turns each cut's N hypotheses into one label and an agreement
in [0, 1]; cuts whose agreement reaches ``min_agreement`` are written as a
CutSet with the label as their supervision's text.

A model is a full model directory, or an adapter directory (a round's
``best/``, or a training checkpoint ``checkpoints/step-N``) put on top of
``base`` unmerged, so checkpoints of several optimisation steps can vote.

Under ``accelerate launch`` (or torchrun), every process decodes its shard of
the pool for each model in turn; the main process gathers each pass, votes
and writes everything. A killed pass resumes from its journal of finished
cuts, with any number of processes (:func:`ilt.asr.decode.decode_files`).

Outputs in ``out_dir``::

    hyps/<model>/        each model's pass over the pool (hyps.jsonl with
                         scores); a finished pass has hyps/<model>/.done, the
                         fingerprint of the model's weights, the adapter's,
                         the cuts and the decoding config, and is reused on a
                         rerun with the same fingerprint, decoded again with
                         another (a failed run resumes at the first
                         unfinished model, from its journal)
    cuts.jsonl.gz        the kept cuts; each supervision's ``custom`` holds
                         ``pseudo_label``: voter, agreement, each model's
                         hypothesis and confidence
    votes.jsonl          every voted cut, kept or not: {id, text, language,
                         agreement, kept} (``ilt score --hyp`` reads it)
    summary.json         counts: cuts, kept, left out by reason; the voter's
                         name and options, min_agreement, the models
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ilt.components import Hypothesis
from ilt.config import ComponentSpec, DecodeConfig, config_hash
from ilt.core.files import read_json, sha256_file, write_json_atomic, write_text_atomic
from ilt.core.runtime import Skips
from ilt.errors import IltInputError
from ilt.models.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CHECKPOINT_ADAPTER,
    resolve_adapter_dir,
)
from ilt.models.lineage import model_identity

log = logging.getLogger("ilt")

DONE = ".done"
#: why a cut is left out
LOW_AGREEMENT, EMPTY_LABEL, NO_HYPOTHESIS = "agreement below the threshold", "empty label", "not decoded by every model"


@dataclass(frozen=True)
class VotingModel:
    """One voter model: a full model, or an adapter on ``base``."""

    name: str
    model_dir: Path
    adapter: Path | None = None


def _is_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() or (path / CHECKPOINT_ADAPTER / ADAPTER_CONFIG).is_file()


def voting_models(paths: Sequence[str | Path], base: str | Path | None = None) -> list[VotingModel]:
    """Each path as a :class:`VotingModel`, named by its last two path parts
    (``M2``, ``focus/best``, ``checkpoints/step-40``), made unique.

    :raises IltInputError: a missing directory, an adapter without ``base``.
    """
    models: list[VotingModel] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise IltInputError(f"--models {path}: no such directory")
        adapter = _is_adapter(path)
        if adapter and base is None:
            raise IltInputError(f"--models {path}: an adapter or checkpoint needs --base (the model it was "
                                f"trained on)")
        if not adapter and not (path / "config.json").is_file():
            raise IltInputError(f"--models {path}: neither a model directory (config.json) nor an adapter")
        name = "_".join(path.resolve().parts[-2:] if adapter else path.resolve().parts[-1:])
        taken = {m.name for m in models}
        unique, n = name, 2
        while unique in taken:
            unique, n = f"{name}-{n}", n + 1
        models.append(VotingModel(unique, Path(base) if adapter else path, path if adapter else None))
    if not models:
        raise IltInputError("pseudo-labels need at least one model (--models)")
    if len(models) == 1:  # e.g. a Fix round right after M0 (the ablation's "Only Fix")
        log.warning("pseudo-label: one model, %s: its hypotheses are the labels (self-training); with "
                    "nothing to vote, every agreement is 1 and --min-agreement keeps them all", models[0].name)
    return models


def _fingerprint(model: VotingModel, cuts_path: Path, config: DecodeConfig) -> dict[str, Any]:
    """What a cached decoding was made from: rerun only when it changes."""
    adapter_weights = None
    if model.adapter is not None:
        adapter_weights = sha256_file(resolve_adapter_dir(model.adapter) / ADAPTER_WEIGHTS)[:12]
    return {"model": model_identity(model.model_dir).get("sha256"), "adapter": adapter_weights,
            "cuts": sha256_file(cuts_path)[:12], "decode_config": config_hash(config)}


def decode_all(models: Sequence[VotingModel], cuts_path: Path, out_dir: Path,
               config: DecodeConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """Each model's records by cut ID, decoding only what is not cached.

    Each model's pass over the pool is kept in ``hyps/<model>/`` with its
    fingerprint (model weights, adapter weights, manifest, decoding config) in
    ``.done``: a rerun whose fingerprint matches reads it back, one whose
    fingerprint differs decodes again. Under ``accelerate launch`` every
    process decodes its shard of each model's pass (:func:`ilt.asr.decode.decode_files`),
    the main process writes; only the main process reads the passes back
    (the others get ``{}``)."""
    from ilt.asr.decode import decode_files
    from ilt.core.runtime import process_state

    state = process_state()
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for i, model in enumerate(models, 1):
        where = out_dir / "hyps" / model.name
        fingerprint = _fingerprint(model, cuts_path, config)
        if read_json(where / DONE) == fingerprint:
            log.info("pseudo-label: model %d/%d %s: decoded already (%s)", i, len(models), model.name, where)
        else:
            log.info("pseudo-label: model %d/%d %s: decoding %s", i, len(models), model.name, cuts_path)
            decode_files(model.model_dir, cuts_path, where, config, adapter=model.adapter, scores=True)
            if state.is_main_process:
                write_json_atomic(where / DONE, fingerprint)
            state.wait_for_everyone()  # every process sees the pass as done before the next check
        if state.is_main_process:
            lines = (where / "hyps.jsonl").read_text(encoding="utf-8").splitlines()
            found[model.name] = {r["id"]: r for r in map(json.loads, lines)}
    return found


def _label(cut: Any, text: str, details: dict[str, Any]) -> Any:
    """The cut with one supervision over the whole cut carrying the label."""
    from lhotse import SupervisionSegment
    from lhotse.utils import fastcopy

    old = cut.supervisions[0] if cut.supervisions else None
    custom = {**((old.custom or {}) if old is not None else {}), "pseudo_label": details}
    if old is not None:
        sup = fastcopy(old, text=text, custom=custom)
    else:
        sup = SupervisionSegment(id=cut.id, recording_id=cut.recording_id, start=0.0, duration=cut.duration,
                                 text=text, custom=custom)
    return fastcopy(cut, supervisions=[sup])


def vote_cuts(cuts: Any, records: dict[str, dict[str, dict[str, Any]]], voter: Any, voter_name: str,
              min_agreement: float, skips: Skips, votes: list[dict[str, Any]] | None = None) -> list[Any]:
    """The labelled cuts whose agreement reaches ``min_agreement``; the rest are
    counted skips. ``votes``, when given, receives every voted cut's ``{id,
    text, language, agreement, kept}``, kept or not (``ilt score --hyp`` reads it).

    :param voter_name: the voter's registered name (``voter`` was built from it).
    :raises PluginError: ``voter.vote`` raised; the message names the voter
        and its package (user-input errors pass through).
    """
    return list(iter_votes(cuts, records, voter, voter_name, min_agreement, skips, votes))


def iter_votes(cuts: Iterable[Any], records: dict[str, dict[str, dict[str, Any]]], voter: Any, voter_name: str,
               min_agreement: float, skips: Skips, votes: list[dict[str, Any]] | None = None) -> Iterator[Any]:
    """:func:`vote_cuts` as a stream: each kept cut as soon as it is voted
    (``cuts`` may be a lazy manifest: one cut is held at a time)."""
    from tqdm import tqdm

    from ilt.core.registry import component_errors

    for cut in tqdm(cuts, desc="vote", unit="cut", disable=None):
        language = cut.supervisions[0].language if cut.supervisions else None
        got = {name: by_id.get(cut.id) for name, by_id in records.items()}
        missing = sorted(name for name, r in got.items() if r is None)
        if missing:
            skips.skip(NO_HYPOTHESIS, cut.id, f"no hypothesis from {', '.join(missing)}")
            continue
        hyps = [Hypothesis(r["text"], r.get("score"), name) for name, r in got.items()]
        with component_errors("voter", voter_name, "vote"):  # names the voter and its package
            vote = voter.vote(hyps, language)
        reason = (EMPTY_LABEL if not vote.text.strip()
                  else LOW_AGREEMENT if vote.agreement < min_agreement else None)
        if votes is not None:
            votes.append({"id": cut.id, "text": vote.text, "language": language,
                          "agreement": round(vote.agreement, 6), "kept": reason is None})
        if reason == EMPTY_LABEL:
            skips.skip(EMPTY_LABEL, cut.id)
            continue
        if reason == LOW_AGREEMENT:
            skips.skip(LOW_AGREEMENT, cut.id, f"{vote.agreement:.3f} < {min_agreement}")
            continue
        yield _label(cut, vote.text, {
            "voter": voter_name, "agreement": round(vote.agreement, 6),
            "hypotheses": {h.model: h.text for h in hyps}, "scores": {h.model: h.score for h in hyps}})


def pseudo_label(models: Sequence[VotingModel], cuts_path: str | Path, out_dir: str | Path, *,
                 voter: Any = "rover", min_agreement: float = 0.0,
                 decode_config: DecodeConfig | None = None) -> dict[str, Any]:
    """Decode ``cuts_path`` with every model, vote, write ``cuts.jsonl.gz``; return the summary.

    Under ``accelerate launch`` (or torchrun) every process decodes its shard
    of each model's pass (:func:`decode_all`); the main process alone votes
    and writes, the others wait for it and return the summary it wrote. The
    manifest is read as a stream (the kept cuts are written as they are voted).

    :param voter: a registered voter's name or :class:`ilt.config.ComponentSpec`.
    :param min_agreement: cuts whose agreement is below it are left out (counted).
    """
    from lhotse import CutSet

    from ilt.core.registry import create
    from ilt.core.runtime import process_state
    from ilt.data.cut_stream import Counted, stream_cuts
    from ilt.data.manifests import save_manifest

    if not 0.0 <= min_agreement <= 1.0:
        raise IltInputError(f"--min-agreement {min_agreement}: expected a number in [0, 1]")
    cuts_path, out_dir = Path(cuts_path), Path(out_dir)
    for _ in stream_cuts(cuts_path):  # a bad manifest fails before any model loads
        pass
    voting = create("voter", voter)  # an unknown voter fails before any decoding
    spec = ComponentSpec.from_yaml(voter, "--voter")
    voter_name, voter_options = spec.name, dict(spec.options)
    records = decode_all(models, cuts_path, out_dir, decode_config or DecodeConfig())
    state = process_state()
    if not state.is_main_process:  # the main process votes and writes
        state.wait_for_everyone()
        return read_json(out_dir / "summary.json")
    skips = Skips("pseudo-label")
    votes: list[dict[str, Any]] = []
    counted = Counted(stream_cuts(cuts_path, check=False))
    kept = Counted(iter_votes(counted, records, voting, voter_name, min_agreement, skips, votes))
    save_manifest(CutSet(kept), out_dir / "cuts.jsonl.gz")  # CutSet over a generator: written as a stream
    write_text_atomic(out_dir / "votes.jsonl", "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in votes))
    summary = {"cuts": counted.n, "kept": kept.n, "left_out": skips.report(), "voter": voter_name,
               "voter_options": voter_options, "min_agreement": min_agreement, "models": [m.name for m in models]}
    write_json_atomic(out_dir / "summary.json", summary)
    log.info("pseudo-label: %d of %d cut(s) kept -> %s", kept.n, counted.n, out_dir / "cuts.jsonl.gz")
    state.wait_for_everyone()
    return summary
