"""Old import path (0.1): the key tables now live with their importers (analysis/ingest/<trainer>.py)."""

from policyshift.analysis.ingest import RAW_PREFIXES, SOURCES, TABLES, KeyMap, lookup  # noqa: F401

BY_KEY = {source: {m.key: m for m in table} for source, table in TABLES.items()}
