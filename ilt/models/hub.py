"""Model references: a local directory, or a Hugging Face Hub model ID.

The rule (:func:`resolve_model`, documented in ``docs/security.md``):

1. ``hf:ORG/NAME[@REVISION]`` is always a hub ID.
2. An existing local directory is always local.
3. A bare ``ORG/NAME[@REVISION]`` is a hub ID only when it cannot be a local
   path: nothing exists at ``ORG/NAME`` nor at ``ORG`` (relative to the
   working directory), and both parts start with a letter or digit. So
   ``--model openai/whisper-large-v3`` keeps working where there is no
   ``openai/`` folder, while ``exp/M0`` typed in a folder that has ``exp/``
   but no ``exp/M0`` is refused: "no such local directory exp/M0; to download
   from the Hugging Face Hub write hf:exp/M0". Anything else that does not
   exist is "no such model directory".

A hub ID (optionally ``@REVISION``: a branch, tag or commit) is resolved
through :func:`huggingface_hub.snapshot_download`, so its cache and
``HF_HUB_CACHE``/``HF_HOME`` behave as users expect. ``HF_HUB_OFFLINE=1`` or
``ILT_OFFLINE=1`` forbids any network access: only the cache is read, and a
model not in it is refused with one line. A revision that is not a 40-digit
commit (``main``, a tag, none at all) moves when the repository changes: the
commit it resolved to is recorded (the snapshot path) and a warning says so.
Only the files a model directory needs are fetched (configs, safetensors
weights, tokenizer and processor files, the model card), never the
duplicate PyTorch/TF/Flax/ONNX weights.

The result is the snapshot directory ``.../models--ORG--NAME/snapshots/<commit>``:
its path alone says which model and which commit it is
(:func:`snapshot_info`), so :func:`ilt.models.lineage.model_identity` records the
resolved revision without any side file.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from ilt.errors import IltInputError

log = logging.getLogger(__name__)

#: The explicit hub prefix: ``hf:ORG/NAME`` is never read as a local path.
HUB_PREFIX = "hf:"
#: Environment variables that forbid network access (``1``, ``true``, ``yes``, ``on``).
OFFLINE_ENV = ("HF_HUB_OFFLINE", "ILT_OFFLINE")

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


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``ILT_OFFLINE`` forbids network access (read at call time)."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "on", "yes", "true") for name in OFFLINE_ENV)


def offline_reason() -> str:
    """Which variable forbids network access, for messages (``"HF_HUB_OFFLINE is set"``)."""
    names = [n for n in OFFLINE_ENV if os.environ.get(n, "").strip().lower() in ("1", "on", "yes", "true")]
    return f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} set"


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
    no_network = offline()
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=no_network,
                                 allow_patterns=ALLOW_PATTERNS)
    except LocalEntryNotFoundError:
        how = offline_reason() if no_network else "the hub could not be reached"
        raise IltInputError(f"{label}: not a local directory, and not in {where} ({how}); download it "
                            f"first (`hf download {repo_id}`) or give a local model directory") from None
    except (HfHubHTTPError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IltInputError(f"{label}: not a local directory, and the hub has no such model: {first}") from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise IltInputError(f"{label}: the cached snapshot {path.name} has no config.json "
                            f"(an incomplete download? run `hf download {repo_id}` again)")
    if not (revision and _COMMIT.match(revision)):
        log.warning("%s: revision %r is not a commit and may move; this run uses commit %s (recorded in the "
                    "lineage); write %s@%s to pin it", label, revision or "main", path.name, repo_id, path.name)
    return path


def resolve_model(value: str | Path, revision: str | None = None) -> Path:
    """A model directory from a local path or a hub ID, by the rule in the
    module docstring (``hf:ORG/NAME[@REV]`` always the hub; an existing
    directory always local; a bare ``ORG/NAME[@REV]`` the hub only when
    neither ``ORG/NAME`` nor ``ORG`` exists locally).

    :raises IltInputError: neither an existing directory nor a resolvable
        hub ID, a local-looking path that does not exist, or a model not in
        the cache while offline (one line).
    """
    text = str(value)
    explicit = text.startswith(HUB_PREFIX)
    if explicit:
        text = text[len(HUB_PREFIX):]
        if not looks_like_hub_id(text):
            raise IltInputError(f"{value}: not a hub model ID (write hf:ORG/NAME or hf:ORG/NAME@REVISION)")
    else:
        path = Path(text).expanduser()
        if path.is_dir():
            if revision:
                raise IltInputError(f"{value}: a local directory has no revision (got {revision!r})")
            return path
        if not looks_like_hub_id(text):
            raise IltInputError(f"{value}: no such model directory (nor a hub model ID ORG/NAME[@REVISION])")
        repo_path = Path(split_reference(text)[0])
        if repo_path.is_dir():
            raise IltInputError(f"{value}: {repo_path} is a local directory, which has no revision; to download "
                                f"from the Hugging Face Hub write {HUB_PREFIX}{text}")
        if repo_path.exists() or repo_path.is_symlink() or Path(repo_path.parts[0]).exists():
            raise IltInputError(f"{value}: no such local directory {repo_path}; to download from the Hugging "
                                f"Face Hub write {HUB_PREFIX}{text}")
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
