"""The typed experiment config: the schema (every default), YAML loading, --set overrides, error lines.

Exports nothing itself: import from its modules (`schema`, `loading`, `overrides`, `messages`).
"""
