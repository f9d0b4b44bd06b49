"""``structcore benchmark``: the paper's evaluation on MVTec AD, VisA or plain folders."""

from __future__ import annotations

from .. import benchmark


def register(sub):
    benchmark.register(sub)
