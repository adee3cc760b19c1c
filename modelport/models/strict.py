"""The message of a strict load: which names are missing and which are unexpected."""

from __future__ import annotations


def _some(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f" … and {len(names) - n} more" if len(names) > n else "")


def key_mismatch(missing: list[str], unexpected: list[str]) -> str:
    """'missing 2: a, b; unexpected 1: c' for a strict-loading error."""
    parts = [f"missing {len(missing)}: {_some(missing)}"] if missing else []
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {_some(unexpected)}")
    return "; ".join(parts)
