"""Helpers for users' own test suites: ``assert_parity(ref, cand)`` in a pytest test."""

from __future__ import annotations


class ParityError(AssertionError):
    """A candidate does not match its reference; the message is the parity table."""

    def __init__(self, report):
        super().__init__("\n" + report.to_text())
        self.report = report


def assert_parity(ref, *candidates, **kwargs):
    """Run :func:`modelport.parity` and raise :class:`ParityError` (an AssertionError carrying the table and
    the report) unless every candidate passes; returns the report otherwise."""
    from .parity import parity

    report = parity(ref, *candidates, **kwargs)
    if not report:
        raise ParityError(report)
    return report


__all__ = ["ParityError", "assert_parity"]
