"""Random numbers from the system's CSPRNG (``os.urandom``), read 64 words at a time.

An error's ref handed to a script, an engine's secret mark, a run's correlation id: each
must be unguessable, and reading the system's source costs a system call (about 10 us
here) however few bytes it gives. One pool serves them all: any thread may draw from it
(a deque's pop is atomic, so no word is ever given twice), and a forked child starts with
an empty pool, never with the words its parent will also give.
"""

from __future__ import annotations

import collections
import os

_WORDS: collections.deque[int] = collections.deque()  # 64-bit words not given yet
_BATCH = 64

os.register_at_fork(after_in_child=_WORDS.clear)


def random_bits(bits: int) -> int:
    """A random number of ``bits`` bits (1 to 64), as ``secrets.randbits`` gives one."""
    try:
        word = _WORDS.pop()
    except IndexError:
        # (the bytes as 64-bit words in one C call: any byte order is as random)
        words = memoryview(os.urandom(8 * _BATCH)).cast("Q").tolist()
        word = words.pop()
        _WORDS.extend(words)
    return word >> (64 - bits)
