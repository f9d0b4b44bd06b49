"""``structcore speed``: the paper's Table 4 on this machine."""

from __future__ import annotations

from .. import speed


def register(sub):
    speed.register(sub)
