"""Texts that make the most tokens a tokenizer can make of ASCII, for the checks of `embeddings.TokenFit`."""

from __future__ import annotations

import random
import string


def ascii_texts(lengths: range, seed: int) -> list[str]:
    """Texts of every sort of ASCII (letters, digits, punctuation, whitespace, control characters),
    and runs of punctuation, one token a character: the most a character can make."""
    rng = random.Random(seed)
    alphabet = string.printable + "\x00\x01\x1b\x7f" + "!.,;" * 20
    return [*("".join(rng.choice(alphabet) for _ in range(n)) for n in lengths), *("!" * n for n in lengths)]
