"""Find and load the canonical JSON Schemas, in an installed wheel or in a checkout."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_VERSION_DIR = "v0.1.0"
V02_SCHEMA_DIR = "v0.2.0"

#: artifact name -> schema file (relative to the version folder). Contract v0.2 replaces two
#: schemas (manifest, raw event); its layout and derived artifacts are v0.1.0's.
SCHEMA_FILES: dict[str, str] = {
    "manifest": "manifest.schema.json",
    "raw_event": "raw_event.schema.json",
    "layout": "layout.schema.json",
    "derived_event": "derived_event.schema.json",
    "motif_ledger": "motif_ledger.schema.json",
    "contingency": "contingency.schema.json",
    "manifest_v02": f"../{V02_SCHEMA_DIR}/manifest.schema.json",
    "raw_event_v02": f"../{V02_SCHEMA_DIR}/raw_event.schema.json",
}


def schema_dir() -> Path:
    """The v0.1.0 schema folder: inside the installed package, else the checkout's."""
    package_root = Path(__file__).resolve().parent.parent
    for candidate in (
        package_root / "schema" / SCHEMA_VERSION_DIR,
        package_root.parent / "schema" / SCHEMA_VERSION_DIR,
    ):
        if (candidate / SCHEMA_FILES["manifest"]).is_file():
            return candidate
    raise FileNotFoundError(
        f"inferoscope's JSON Schemas ({SCHEMA_VERSION_DIR}) are missing from {package_root}; "
        "reinstall the package"
    )


@cache
def load_schema(artifact: str) -> dict[str, Any]:
    """The parsed schema of ``artifact`` (one of SCHEMA_FILES)."""
    path = (schema_dir() / SCHEMA_FILES[artifact]).resolve()
    with path.open(encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema
