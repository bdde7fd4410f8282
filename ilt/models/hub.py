"""Model references: a local directory, or a Hugging Face Hub model ID.

``--model openai/whisper-large-v3`` works as in every Hugging Face tool: an
argument that is not an existing directory but reads as a hub ID
(``ORG/NAME``, optionally ``ORG/NAME@REVISION``, a branch, tag or commit) is
resolved through :func:`huggingface_hub.snapshot_download`, so its cache,
``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE=1`` behave as users expect.
Only the files a model directory needs are fetched (configs, safetensors
weights, tokenizer and processor files, the model card), never the
duplicate PyTorch/TF/Flax/ONNX weights.

The result is the snapshot directory ``.../models--ORG--NAME/snapshots/<commit>``:
its path alone says which model and which commit it is
(:func:`snapshot_info`), so :func:`ilt.models.lineage.model_identity` records the
resolved revision without any side file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ilt.errors import IltInputError

#: What a hub model ID looks like: ``ORG/NAME`` (the hub's own character set).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
#: A cache snapshot directory: ``models--ORG--NAME/snapshots/<40 hex digits>``.
_SNAPSHOT = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

#: Files fetched for a model: everything a transformers / CTranslate2 Whisper
#: directory reads (weights as safetensors only; the card for its license).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "README.md"]


def split_reference(value: str) -> tuple[str, str | None]:
    """``"ORG/NAME@REV"`` -> ``("ORG/NAME", "REV")``; without ``@``, revision ``None``."""
    repo_id, sep, revision = value.partition("@")
    return repo_id, (revision or None) if sep else None


def looks_like_hub_id(value: str) -> bool:
    """True for ``ORG/NAME`` or ``ORG/NAME@REVISION`` (not a path: no leading
    ``.``, ``/`` or ``~``, exactly one slash)."""
    repo_id, _ = split_reference(value)
    return bool(_REPO_ID.match(repo_id)) and not repo_id.startswith((".", "~"))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def snapshot_download_dir(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of hub model ``repo_id`` at ``revision`` (default:
    ``main``), downloaded when it is not cached and the hub is reachable.

    The environment is read at call time (``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``),
    so it can change within one process.

    :raises IltInputError: not in the cache (offline) or not on the hub; one
        line naming the ID, the revision and the cache.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    where = f"cache {cache_dir}" if cache_dir else "the default Hugging Face cache"
    label = f"{repo_id}@{revision}" if revision else repo_id
    offline = _offline()
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                 allow_patterns=ALLOW_PATTERNS)
    except LocalEntryNotFoundError:
        how = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise IltInputError(f"{label}: not a local directory, and not in {where} ({how}); download it "
                            f"first (`hf download {repo_id}`) or give a local model directory") from None
    except (HfHubHTTPError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IltInputError(f"{label}: not a local directory, and the hub has no such model: {first}") from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise IltInputError(f"{label}: the cached snapshot {path.name} has no config.json "
                            f"(an incomplete download? run `hf download {repo_id}` again)")
    return path


def resolve_model(value: str | Path, revision: str | None = None) -> Path:
    """A model directory from a local path or a hub ID (``ORG/NAME[@REV]``).

    An existing directory always wins, so ``exp/M0`` is never looked up on
    the hub when it exists.

    :raises IltInputError: neither an existing directory nor a resolvable
        hub ID (one line).
    """
    path = Path(value).expanduser()
    if path.is_dir():
        if revision:
            raise IltInputError(f"{value}: a local directory has no revision (got {revision!r})")
        return path
    text = str(value)
    if not looks_like_hub_id(text):
        raise IltInputError(f"{value}: no such model directory (nor a hub model ID ORG/NAME[@REVISION])")
    repo_id, at_revision = split_reference(text)
    if at_revision and revision and at_revision != revision:
        raise IltInputError(f"{value}: revision {at_revision!r} and --revision {revision!r} disagree")
    return snapshot_download_dir(repo_id, at_revision or revision)


def snapshot_info(model_dir: str | Path) -> dict[str, Any] | None:
    """``{"repo_id", "revision"}`` when ``model_dir`` is a hub cache snapshot
    (``models--ORG--NAME/snapshots/<commit>``), else ``None``."""
    path = Path(model_dir).absolute()
    if not _COMMIT.match(path.name) or path.parent.name != "snapshots":
        return None
    match = _SNAPSHOT.match(path.parent.parent.name)
    if not match:
        return None
    return {"repo_id": f"{match['org']}/{match['name']}", "revision": path.name}
