"""The one text tokeniser of hashed_bag features (prepare and serving's cold start)."""
from __future__ import annotations

import zlib

from twotower.data.features import hash_tokens, title_tokens


def crc(word: str, buckets: int) -> int:
    return zlib.crc32(word.encode()) % (buckets - 1) + 1


def test_hash_tokens_lowercases_splits_on_words_truncates_and_hashes_into_1_to_buckets_minus_1():
    assert hash_tokens("Hello, WORLD! it's 42", buckets=64, max_length=4) == [
        crc("hello", 64), crc("world", 64), crc("it", 64), crc("s", 64)]
    assert hash_tokens("", 64, 4) == [] and hash_tokens("a b c", 64, 0) == []
    assert all(1 <= b <= 7 for b in hash_tokens("the quick brown fox jumps over the lazy dog", 8, 16))


def test_title_tokens_keep_their_values():
    # the values title_tokens gave before hash_tokens existed: CRC-32 buckets 1..1023 of the title's words
    assert title_tokens("Toy Story (1995)") == [crc("toy", 1024), crc("story", 1024)] == [842, 115]
    assert title_tokens("Toy Story (1995)") == hash_tokens("Toy Story", 1024, 16)
    assert title_tokens("City of Lost Children, The (Cité des enfants perdus, La) (1995)", max_length=3) == [
        crc("city", 1024), crc("of", 1024), crc("lost", 1024)]
