"""The schema versions of contract v0.1.0, in one place."""

from __future__ import annotations

MANIFEST_SCHEMA_VERSION = "manifest/v0.1.0"
RAW_EVENT_SCHEMA_VERSION = "raw/v0.1.0"
LAYOUT_SCHEMA_VERSION = "layout/v0.1.0"
DERIVED_EVENT_SCHEMA_VERSION = "derived/v0.1.0-provisional"
MOTIF_LEDGER_SCHEMA_VERSION = "motif_ledger/v0.1.0-provisional"
CONTINGENCY_SCHEMA_VERSION = "contingency/v0.1.0-provisional"

#: contract v0.2 (docs/contract-v0.2.md): its own manifest and token lines; layout and derived
#: artifacts are v0.1.0's.
MANIFEST_V02_SCHEMA_VERSION = "manifest/v0.2.0"
RAW_EVENT_V02_SCHEMA_VERSION = "raw/v0.2.0"

#: manifest.artifact_versions key -> the version that key must declare.
ARTIFACT_VERSION_KEYS: dict[str, str] = {
    "raw_event_schema_version": RAW_EVENT_SCHEMA_VERSION,
    "derived_event_schema_version": DERIVED_EVENT_SCHEMA_VERSION,
    "layout_schema_version": LAYOUT_SCHEMA_VERSION,
    "motif_ledger_schema_version": MOTIF_LEDGER_SCHEMA_VERSION,
    "contingency_schema_version": CONTINGENCY_SCHEMA_VERSION,
}

#: artifact name (as used in issue codes) -> manifest.artifact_versions key.
ARTIFACT_VERSION_FIELD: dict[str, str] = {
    "raw_event": "raw_event_schema_version",
    "derived_event": "derived_event_schema_version",
    "layout": "layout_schema_version",
    "motif_ledger": "motif_ledger_schema_version",
    "contingency": "contingency_schema_version",
}

#: bundle file names.
MANIFEST_FILE = "manifest.json"
RAW_TRACE_FILE = "raw_trace.ndjson"
LAYOUT_FILE = "layout.json"
DERIVED_FILE = "derived.ndjson"
MOTIF_LEDGER_FILE = "motif_ledger.json"
CONTINGENCY_FILE = "contingency.json"

FLOAT_TOLERANCE = 1e-6

#: a contract v0.2 manifest's artifact_versions
V02_ARTIFACT_VERSIONS: dict[str, str] = {
    **ARTIFACT_VERSION_KEYS,
    "raw_event_schema_version": RAW_EVENT_V02_SCHEMA_VERSION,
}
