"""An encoder's provenance remembered on disk, so an embed run with nothing to do never imports open_clip.

Provenance (model config, pretrained tag, preprocessing, checkpoint digest) needs open_clip, whose import
costs about 3 s of torch and torchvision on a 2-core machine, while a run whose shards are all complete
needs nothing else from them. The cache key holds everything provenance is computed from: the encoder
settings, mmembed's and open_clip's versions, and the size and modification time of every file it reads
(checkpoint, local model dir, bundled model config), so a changed file means a fresh computation. Entries
live under ``$MMEMBED_CACHE/provenance``; a missing or unreadable entry is simply recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from mmembed import __version__, storage
from mmembed.config import LOCAL_DIR_PREFIX, EncoderConfig

log = logging.getLogger(__name__)
BUNDLED_CONFIG_DIR = Path(__file__).parent / "configs"  # small model configs shipped with mmembed
OPEN_CLIP_DISTRIBUTION = "open_clip_torch"


def encoder_provenance(config: EncoderConfig) -> dict[str, Any]:
    """``openclip.provenance(config)``, read from the cache when nothing it depends on has changed."""
    key = json.dumps(_fingerprint(config), sort_keys=True)
    path = os.path.join(storage.cache_root(), "provenance", hashlib.sha256(key.encode()).hexdigest() + ".json")
    try:
        entry = json.loads(Path(path).read_text(encoding="utf-8"))
        if entry["key"] == key:
            return entry["provenance"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet, or a damaged entry: compute it
    from mmembed.encoders.openclip import provenance

    prov = provenance(config)
    body = json.dumps({"key": key, "provenance": prov}).encode()
    try:
        storage.write_atomic(path, lambda f: f.write(body))
    except OSError as exc:  # a read-only home is no reason to fail the job
        log.debug("provenance cache not written (%s)", exc)
    return prov


def _fingerprint(config: EncoderConfig) -> dict[str, Any]:
    """Everything ``provenance`` reads: settings, package versions and the state of the files involved."""
    files = [BUNDLED_CONFIG_DIR / f"{config.model}.json"]
    if config.model.startswith(LOCAL_DIR_PREFIX):
        files += sorted(Path(config.model[len(LOCAL_DIR_PREFIX) :]).glob("*"))
    states = [_file_state(str(path)) for path in files]
    if config.checkpoint:
        states.append(_file_state(config.checkpoint, absolute=True))
    return {
        "mmembed": __version__,
        "open_clip": metadata.version(OPEN_CLIP_DISTRIBUTION),
        "model": config.model,
        "pretrained": config.pretrained,
        "seed": config.seed,
        "random_init": config.random_init,
        "files": states,
    }


def _file_state(path: str, absolute: bool = False) -> list[Any]:
    """(path, size, modification time) of a local or remote file; None for both when it does not exist."""
    if absolute and storage.is_local(path):
        path = str(Path(path).resolve())
    found = storage.info(path)
    return [path, found.size if found else None, found.mtime if found else None]
