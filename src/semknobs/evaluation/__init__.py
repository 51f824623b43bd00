"""Held-out evaluation and the referee (evaluation only: see docs/architecture.md)."""
