"""Settings modules: base (shared), dev (SQLite, embedded Redis allowed), test, prod."""
