"""The one pool of random numbers (bridge.randomness): refs, marks and run ids drawn from
it are in range, never given twice, and a forked child does not repeat its parent's."""

from __future__ import annotations

import os
import threading

from bridge import randomness
from bridge.randomness import random_bits


def test_numbers_have_the_bits_asked_for_and_use_them() -> None:
    refs = [random_bits(53) for _ in range(500)]
    assert all(0 <= ref < 2**53 for ref in refs)
    assert max(refs) >= 2**52  # the top bit is used (500 draws: chance 2**-500 otherwise)
    assert len(set(refs)) == len(refs)


def test_threads_drawing_at_once_are_never_given_the_same_word() -> None:
    drawn: list[list[int]] = [[] for _ in range(8)]

    def draw(mine: list[int]) -> None:
        for _ in range(2000):
            mine.append(random_bits(64))

    threads = [threading.Thread(target=draw, args=(mine,)) for mine in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    words = [word for mine in drawn for word in mine]
    assert len(set(words)) == len(words) == 16000


def test_a_forked_child_does_not_give_the_words_its_parent_gives_next() -> None:
    random_bits(64)  # the pool holds words now
    assert randomness._WORDS
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first words, to the parent
        try:
            os.write(writer, b",".join(str(random_bits(64)).encode() for _ in range(8)))
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        child = {int(word) for word in pipe.read().split(b",")}
    os.waitpid(pid, 0)
    parent = {random_bits(64) for _ in range(8)}
    assert len(child) == 8 and not child & parent
