"""Publish a staged folder as the output partition in one step.

Writers only ever write into a private staging folder; the commit renames it into place (same
filesystem, so no copy), replacing the partition of an earlier run of the same date. A crash before
the commit leaves the published partition untouched; the `_SUCCESS` manifest travels with the data.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

MANIFEST = "_SUCCESS"


def commit_partition(staging: Path, final: Path, manifest: dict) -> Path:
    staging.mkdir(parents=True, exist_ok=True)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    final.parent.mkdir(parents=True, exist_ok=True)
    replaced = final.with_name(f"{final.name}.replaced-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.rename(replaced)
    staging.rename(final)
    shutil.rmtree(replaced, ignore_errors=True)
    return final
