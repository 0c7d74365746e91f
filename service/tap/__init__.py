"""TAP 1.1: ADQL translation, TAP_SCHEMA, VOSI metadata and the sync (and async) endpoints."""
