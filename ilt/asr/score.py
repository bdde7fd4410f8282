"""WER/CER per language (or accent), pooled overall, sclite-compatible files.

``score`` is a pure function over plain dicts; ``score_files`` reads a
reference CutSet and a hypothesis file, scores them and writes, atomically::

    scores.md      the table (also printed by ``ilt score``)
    scores.json    the same rows, the pooled overall and the counts
    details.jsonl  one object per utterance: normalised texts, S/D/I, status
    ref.trn hyp.trn  normalised scoring units, for NIST sclite

Text goes through the MLC-SLM challenge normalisation
(:mod:`ilt.data.text`): words for most languages, characters for Japanese,
Korean and Thai. Alignment counts come from ``jiwer.process_words`` on those
units. The overall row is pooled over utterances (all errors / all reference
units, the challenge's mixed error rate when units are mixed), never a mean
of the rows.

Bad input:

- a reference whose normalised text is empty (an eval set, a blank
  transcript) is skipped and counted (``empty_reference``);
- a reference without a hypothesis is scored as an empty hypothesis (all
  deletions) and counted (``missing_hypothesis``);
- a hypothesis whose ID is not a reference ID is skipped and counted
  (``hypothesis_without_reference``), so a subset of references can be
  scored against a full decode; but when *no* hypothesis ID matches, the
  files do not belong together and that is an error;
- malformed hypothesis lines, duplicate IDs, a reference without a language
  and an unreadable reference file are :class:`~ilt.errors.IltInputError`
  naming the file, line or cut ID.

``.trn`` convention: ``<units separated by spaces> (<group>-<cut ID>)``, the
group label (``en``, ``en-American`` with non-word characters turned into
``_``) standing in sclite's speaker field, so that::

    sclite -r ref.trn trn -h hyp.trn trn -i rm -e utf-8 -o rsum stdout

prints one row per group and a ``Sum`` row equal to the overall row. Both
files hold every scored reference in the same order; a missing hypothesis is
an empty line body. sclite aligns with weighted costs (substitution 4,
insertion and deletion 3), jiwer with unit costs: the totals agree unless an
alignment with more errors is cheaper under sclite's weights, which takes a
long run of shifted words.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ilt.core.files import write_json_atomic, write_text_atomic
from ilt.data.text import normalize, tokens_for_scoring, unit_of
from ilt.errors import IltInputError

log = logging.getLogger("ilt")

__all__ = [
    "GROUP_BY",
    "GroupScore",
    "ScoreResult",
    "UttScore",
    "group_label",
    "load_hypotheses",
    "load_references",
    "reference_of",
    "references",
    "score",
    "score_files",
]

GROUP_BY = ("language", "accent")

#: Reasons an utterance is left out of the counts (see the module docstring).
EMPTY_REFERENCE = "empty_reference"
HYP_WITHOUT_REF = "hypothesis_without_reference"

_TRN_LINE = re.compile(r"^(?P<text>.*?)\s*\((?P<id>[^()]*)\)\s*$")
_TRN_SAFE = re.compile(r"\W")
#: What cannot go in a .trn ID (it would end the ID or the line) ...
_TRN_BAD_ID = re.compile(r"[\s()\x00-\x1f\x7f]")
#: ... and what cannot go in a .trn unit (it would end the line or open a second ID).
_TRN_BAD_UNIT = re.compile(r"[()\s\x00-\x1f\x7f]")

Reference = tuple[str, "str | None", "str | None"]  # (language, text, accent)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class UttScore:
    """One scored utterance: its normalised units and alignment counts."""

    id: str
    group: str
    language: str
    accent: str | None
    unit: str
    ref: tuple[str, ...]
    hyp: tuple[str, ...]
    sub: int
    dele: int
    ins: int
    hits: int
    missing_hyp: bool = False

    @property
    def ref_units(self) -> int:
        return len(self.ref)

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "status": "missing_hypothesis" if self.missing_hyp else "scored",
            "group": self.group,
            "language": self.language,
            "accent": self.accent,
            "unit": self.unit,
            "ref": " ".join(self.ref),
            "hyp": " ".join(self.hyp),
            "sub": self.sub,
            "del": self.dele,
            "ins": self.ins,
            "hits": self.hits,
            "ref_units": self.ref_units,
            "errors": self.errors,
        }


@dataclass(frozen=True)
class GroupScore:
    """One row of the table: counts summed over the group's utterances."""

    group: str
    unit: str  # "word", "char", or "mixed" when a row pools both
    sub: int
    dele: int
    ins: int
    hits: int
    utts: int

    @property
    def ref_units(self) -> int:
        return self.sub + self.dele + self.hits

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def error_rate(self) -> float | None:
        """Errors per 100 reference units; ``None`` for a row with no units."""
        return 100.0 * self.errors / self.ref_units if self.ref_units else None

    @classmethod
    def pool(cls, group: str, utts: Iterable[UttScore]) -> "GroupScore":
        utts = list(utts)
        units = {u.unit for u in utts}
        return cls(
            group=group,
            unit=units.pop() if len(units) == 1 else ("mixed" if units else "-"),
            sub=sum(u.sub for u in utts),
            dele=sum(u.dele for u in utts),
            ins=sum(u.ins for u in utts),
            hits=sum(u.hits for u in utts),
            utts=len(utts),
        )

    def to_dict(self) -> dict:
        return {
            "group": self.group,
            "unit": self.unit,
            "error_rate": self.error_rate,
            "sub": self.sub,
            "del": self.dele,
            "ins": self.ins,
            "hits": self.hits,
            "errors": self.errors,
            "ref_units": self.ref_units,
            "utts": self.utts,
        }


@dataclass
class ScoreResult:
    """Rows per group, the pooled ``Overall`` row, utterances and skips."""

    group_by: str
    rows: list[GroupScore]
    overall: GroupScore
    utterances: list[UttScore]
    skipped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "scored": len(self.utterances),
            "missing_hypothesis": sum(u.missing_hyp for u in self.utterances),
            EMPTY_REFERENCE: len(self.skipped.get(EMPTY_REFERENCE, [])),
            HYP_WITHOUT_REF: len(self.skipped.get(HYP_WITHOUT_REF, [])),
        }

    def row(self, group: str) -> GroupScore:
        """The row named ``group`` (``"Overall"`` gives the pooled row)."""
        if group == self.overall.group:
            return self.overall
        for row in self.rows:
            if row.group == group:
                return row
        raise KeyError(f"no row {group!r}; rows: {[r.group for r in self.rows]}")

    def to_dict(self) -> dict:
        return {
            "group_by": self.group_by,
            "normalisation": "MLC-SLM challenge: lowercase, punctuation deleted "
                             "(apostrophes and hyphens kept); ja/ko/th scored by character",
            "rows": [r.to_dict() for r in self.rows],
            "overall": self.overall.to_dict(),
            "counts": self.counts,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_markdown(self) -> str:
        head = [self.group_by, "unit", "error %", "sub", "del", "ins", "ref units", "utts"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 6) + "|"]
        for row in [*self.rows, self.overall]:
            rate = "n/a" if row.error_rate is None else f"{row.error_rate:.2f}"
            cells = [row.group, row.unit, rate, row.sub, row.dele, row.ins, row.ref_units, row.utts]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        notes = {
            "missing_hypothesis": "reference(s) without a hypothesis, scored as empty",
            EMPTY_REFERENCE: "reference(s) with empty text skipped",
            HYP_WITHOUT_REF: "hypothesis ID(s) without a reference skipped",
        }
        counts = self.counts
        extra = [f"{counts[k]} {text}" for k, text in notes.items() if counts[k]]
        if extra:
            lines += ["", "Note: " + "; ".join(extra) + "."]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- scoring


def group_label(language: str, accent: str | None, group_by: str) -> str:
    """Row name of an utterance: ``en``; by accent ``en-American`` (``fr`` if none)."""
    if group_by == "accent" and accent:
        return f"{language}-{accent}"
    return language


def _alignment_counts(refs: list[list[str]], hyps: list[list[str]]) -> list[tuple[int, int, int, int]]:
    """(sub, del, ins, hits) per utterance, from one batched ``jiwer.process_words``.

    Units never contain whitespace, so joining them with spaces and letting
    jiwer's default transform split them again is lossless.
    """
    import jiwer

    if not refs:
        return []
    out = jiwer.process_words([" ".join(r) for r in refs], [" ".join(h) for h in hyps])
    counts = []
    for chunks in out.alignments:
        sub = dele = ins = hits = 0
        for c in chunks:
            span = c.ref_end_idx - c.ref_start_idx
            if c.type == "equal":
                hits += span
            elif c.type == "substitute":
                sub += span
            elif c.type == "delete":
                dele += span
            elif c.type == "insert":
                ins += c.hyp_end_idx - c.hyp_start_idx
        counts.append((sub, dele, ins, hits))
    assert sum(c[0] for c in counts) == out.substitutions and sum(c[2] for c in counts) == out.insertions
    return counts


def score(
    refs: Mapping[str, Reference],
    hyps: Mapping[str, str],
    group_by: str = "language",
) -> ScoreResult:
    """Score ``hyps`` (ID -> text) against ``refs`` (ID -> (language, text, accent)).

    Both sides are normalised with :func:`ilt.data.text.tokens_for_scoring`
    in the reference's language. Rows are sorted by group name; ``Overall``
    pools every scored utterance. See the module docstring for what is
    skipped and counted.
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, not {group_by!r}")

    skipped: dict[str, list[str]] = {EMPTY_REFERENCE: [], HYP_WITHOUT_REF: []}
    kept: list[tuple[str, str, str | None, list[str], list[str], bool]] = []
    for utt_id, (language, text, accent) in refs.items():
        if not normalize(text, language or ""):
            skipped[EMPTY_REFERENCE].append(utt_id)
            continue
        if not language:
            raise IltInputError(f"reference {utt_id!r} has text but no language")
        language = language.strip().lower()
        missing = utt_id not in hyps
        hyp_tokens = [] if missing else tokens_for_scoring(hyps[utt_id], language)
        kept.append((utt_id, language, accent or None, tokens_for_scoring(text, language), hyp_tokens, missing))

    skipped[HYP_WITHOUT_REF] = [h for h in hyps if h not in refs]
    if hyps and len(skipped[HYP_WITHOUT_REF]) == len(hyps) and refs:
        examples = ", ".join(repr(h) for h in list(hyps)[:3])
        raise IltInputError(
            f"none of the {len(hyps)} hypothesis IDs is a reference ID (e.g. {examples}; "
            f"references e.g. {next(iter(refs))!r}): are the hypotheses for this reference set?"
        )

    utts = [
        UttScore(
            id=utt_id, group=group_label(language, accent, group_by), language=language, accent=accent,
            unit=unit_of(language), ref=tuple(ref), hyp=tuple(hyp),
            sub=sub, dele=dele, ins=ins, hits=hits, missing_hyp=missing,
        )
        for (utt_id, language, accent, ref, hyp, missing), (sub, dele, ins, hits) in zip(
            kept, _alignment_counts([k[3] for k in kept], [k[4] for k in kept])
        )
    ]

    by_group: dict[str, list[UttScore]] = {}
    for u in utts:
        by_group.setdefault(u.group, []).append(u)
    result = ScoreResult(
        group_by=group_by,
        rows=[GroupScore.pool(g, by_group[g]) for g in sorted(by_group)],
        overall=GroupScore.pool("Overall", utts),
        utterances=utts,
        skipped={k: v for k, v in skipped.items() if v},
    )
    _log_skips(result)
    return result


def _log_skips(result: ScoreResult) -> None:
    counts = result.counts
    if counts["missing_hypothesis"]:
        ids = [u.id for u in result.utterances if u.missing_hyp]
        log.warning("score: %d reference(s) have no hypothesis, scored as empty (e.g. %s)",
                    len(ids), ", ".join(ids[:3]))
    for reason, ids in result.skipped.items():
        log.warning("score: skipped %d %s (e.g. %s)", len(ids), reason.replace("_", " "), ", ".join(ids[:3]))


# --------------------------------------------------------------------------- files


def reference_of(cut: Any, where: str = "") -> Reference:
    """A cut's reference: ``(language, text, accent)``.

    The cut's supervisions are joined in time order and must share one
    language; the accent is the first supervision's ``custom["accent"]``. A
    cut without supervisions (or without text) has no text: it is skipped
    when scored. Training's dev evaluation reads references through this
    function too, so both agree on the same cuts.

    :param where: the manifest, named in errors.
    """
    sups = sorted(cut.supervisions, key=lambda s: s.start)
    languages = {s.language for s in sups if s.text and s.text.strip()}
    if len(languages) > 1:
        prefix = f"{where}: " if where else ""
        raise IltInputError(f"{prefix}cut {cut.id!r} mixes languages {sorted(map(str, languages))}")
    language = languages.pop() if languages else (sups[0].language if sups else None)
    text = " ".join(s.text for s in sups if s.text) or None
    accent = (sups[0].custom or {}).get("accent") if sups else None
    return (language, text, accent)


def references(cuts: Iterable[Any], where: str = "") -> dict[str, Reference]:
    """Cut ID -> :func:`reference_of` for every cut; a repeated ID is an error."""
    refs: dict[str, Reference] = {}
    for cut in cuts:
        if cut.id in refs:
            raise IltInputError(f"{where or 'cuts'}: cut ID {cut.id!r} appears twice")
        refs[cut.id] = reference_of(cut, where)
    return refs


def load_references(path: str | Path) -> dict[str, Reference]:
    """Read a CutSet: cut ID -> (language, text, accent), see :func:`reference_of`."""
    from lhotse import CutSet, load_manifest_lazy

    path = Path(path)
    try:
        cuts = load_manifest_lazy(path)
        if not isinstance(cuts, CutSet):
            raise IltInputError(f"{path}: expected a CutSet, found {type(cuts).__name__}")
        return references(cuts, str(path))
    except IltInputError:
        raise
    except Exception as exc:  # lhotse/gzip/json errors surface while iterating
        raise IltInputError(f"{path}: cannot read reference cuts: {type(exc).__name__}: {exc}") from None


def _read_lines(path: Path) -> Iterable[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise IltInputError(f"{path}:{lineno}: not UTF-8 ({exc.reason})") from None
    except OSError as exc:
        raise IltInputError(f"{path}: cannot read hypotheses: {exc}") from None


def load_hypotheses(path: str | Path, ref_ids: Iterable[str] = ()) -> dict[str, str]:
    """Read hypotheses: ``.trn`` (``text (ID)`` per line) or JSONL (``{"id", "text"}``).

    JSONL may be gzipped (``.jsonl.gz``); extra keys are ignored. In a
    ``.trn`` file an ID that is not in ``ref_ids`` but whose part after the
    first ``-`` is (``en-<cut ID>``, as written by :func:`score_files`) maps
    to that cut ID. Blank lines are ignored; anything else that does not
    parse, and an ID seen twice, is an :class:`IltInputError` naming the line.
    """
    path = Path(path)
    ref_ids = set(ref_ids)
    is_trn = path.name.endswith((".trn", ".trn.gz"))
    hyps: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, line in _read_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if is_trn:
            m = _TRN_LINE.match(line.rstrip("\r\n"))
            if not m or not m["id"].strip():
                raise IltInputError(f"{where}: expected 'text (utterance-id)', got {line.strip()[:80]!r}")
            utt_id, text = m["id"].strip(), m["text"]
            if utt_id not in ref_ids and "-" in utt_id and utt_id.split("-", 1)[1] in ref_ids:
                utt_id = utt_id.split("-", 1)[1]
        else:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IltInputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise IltInputError(f"{where}: expected a JSON object {{\"id\": ..., \"text\": ...}}")
            utt_id, text = obj.get("id"), obj.get("text")
            if not isinstance(utt_id, str) or not utt_id:
                raise IltInputError(f"{where}: 'id' must be a non-empty string, got {utt_id!r}")
            if not isinstance(text, str):
                raise IltInputError(f"{where}: 'text' of {utt_id!r} must be a string, got {text!r}")
        if utt_id in hyps:
            raise IltInputError(f"{where}: hypothesis ID {utt_id!r} already on line {first_line[utt_id]}")
        hyps[utt_id] = text
        first_line[utt_id] = lineno
    return hyps


def _trn_lines(result: ScoreResult, side: str) -> str:
    """The ``ref.trn`` or ``hyp.trn`` text: one line per utterance; an ID that
    would break the line is refused, and a unit's parentheses or control
    characters (hypotheses are data) become ``_``, so every line has one ID."""
    lines = []
    for u in result.utterances:
        if _TRN_BAD_ID.search(u.id):
            shown = repr(u.id) if len(u.id) <= 60 else f"{u.id[:40]!r}... ({len(u.id)} characters)"
            raise IltInputError(f"cut ID {shown} has whitespace, parentheses or control characters and cannot "
                                f"go in a .trn file; rename it in the manifest")
        units = " ".join(_TRN_BAD_UNIT.sub("_", unit) for unit in getattr(u, side))
        speaker = _TRN_SAFE.sub("_", u.group)
        lines.append(f"{units} ({speaker}-{u.id})" if units else f"({speaker}-{u.id})")
    return "".join(line + "\n" for line in lines)


def score_files(
    ref_path: str | Path,
    hyp_path: str | Path,
    out_dir: str | Path,
    group_by: str = "language",
) -> ScoreResult:
    """Score a hypothesis file against a reference CutSet; write the reports to ``out_dir``."""
    ref_path, hyp_path, out_dir = Path(ref_path), Path(hyp_path), Path(out_dir)
    refs = load_references(ref_path)
    hyps = load_hypotheses(hyp_path, refs)
    result = score(refs, hyps, group_by=group_by)
    if not result.utterances:
        raise IltInputError(
            f"{ref_path}: no reference with text to score ({len(refs)} cut(s), "
            f"{result.counts[EMPTY_REFERENCE]} with empty text)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    ref_trn, hyp_trn = _trn_lines(result, "ref"), _trn_lines(result, "hyp")
    skipped = [
        {"id": utt_id, "status": reason} for reason, ids in result.skipped.items() for utt_id in ids
    ]
    details = [u.to_dict() for u in result.utterances] + skipped
    write_text_atomic(out_dir / "ref.trn", ref_trn)
    write_text_atomic(out_dir / "hyp.trn", hyp_trn)
    write_text_atomic(out_dir / "details.jsonl",
                      "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in details))
    write_json_atomic(out_dir / "scores.json",
                      {**result.to_dict(), "ref": str(ref_path), "hyp": str(hyp_path)})
    write_text_atomic(out_dir / "scores.md", result.to_markdown())
    overall = result.overall
    log.info("score: %s: %d utterance(s), overall %.2f%% (%d errors / %d units) -> %s",
             hyp_path, overall.utts, overall.error_rate or 0.0, overall.errors, overall.ref_units, out_dir)
    return result


def has_references(path: str | Path) -> bool:
    """Whether the CutSet at ``path`` has reference text to score.

    An evaluation set (the challenge's eval set: supervisions without text)
    has none: it is decoded, and its hypotheses are written as a submission,
    but it is not scored. Text that normalises to nothing counts as none.
    """
    refs = load_references(path).values()
    return any(text and normalize(text, language or "") for language, text, _ in refs)
