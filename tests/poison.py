"""Hostile znode values: each parses as YAML (or nearly) and used to hurt a host.

Shared by the unit, daemon and CLI tests so the three refuse exactly the same
shapes. Each entry: (name, raw bytes, words the error must contain).
"""

from __future__ import annotations

_LOL = '["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'


def _bomb(levels: int, width: int) -> bytes:
    """The classic "billion laughs": each level repeats the previous ``width`` times."""
    lines = [f"a0: &a0 {_LOL}"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return ("\n".join(lines) + "\n").encode()


POISON: list[tuple[str, bytes, str]] = [
    ("huge-int", b"1" * 5000, "integer out of range"),
    ("int-over-64-bit", b"9223372036854775808", "integer out of range"),
    ("hex-over-64-bit", b"0x1" + b"0" * 16, "integer out of range"),
    ("deep-flow-list", b"[" * 500 + b"]" * 500, "nested deeper than 64"),
    ("deep-flow-map", b"{a: " * 500 + b"1" + b"}" * 500, "nested deeper than 64"),
    ("deep-block-list", b"".join(b"  " * i + b"-\n" for i in range(500)) + b"x\n", "nested"),
    ("alias-bomb-9x9", _bomb(9, 9), "aliases"),
    ("alias-bomb-6x10", _bomb(6, 10), "aliases"),
    ("single-alias", b"x: &x 1\ny: *x\n", "aliases"),
    ("merge-key", b"base: &b {a: 1}\nother:\n  <<: *b\n", "aliases"),
]
