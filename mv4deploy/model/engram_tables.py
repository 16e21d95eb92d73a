"""Engram hash-table sizes: one distinct prime per (layer, n-gram order, hash head), pure Python.

Follows the official demo (deepseek-ai/Engram ``engram_demo_v1.py``, facts/deepseek-arch.md §3.1 step 4):
for each Engram layer, for each order 2..max_ngram_size, for each of ``n_heads`` heads, the table size
is the next prime at or above ``vocab_size`` that no earlier head, order or layer has taken. All heads
of a layer share one embedding of sum(primes) rows, each head starting at the running offset.

Check: V4.1-Flash (vocab 16,000,000, orders 2..4, 8 heads, layers [1, 14]) gives
384,006,168 and 384,016,682 rows, the ``engram_num_embeddings`` its config ships.
"""

from __future__ import annotations

from functools import lru_cache


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


@lru_cache(maxsize=64)
def head_primes(vocab_size: int, max_ngram_size: int, n_heads: int,
                n_layers: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """primes[layer][order - 2][head]; never reused across heads, orders or layers."""
    taken: set[int] = set()
    layers = []
    for _ in range(n_layers):
        orders = []
        for _order in range(2, max_ngram_size + 1):
            candidate, heads = vocab_size - 1, []
            for _head in range(n_heads):
                candidate += 1
                while candidate in taken or not is_prime(candidate):
                    candidate += 1
                taken.add(candidate)
                heads.append(candidate)
            orders.append(tuple(heads))
        layers.append(tuple(orders))
    return tuple(layers)


def table_rows(vocab_size: int, max_ngram_size: int, n_heads: int, n_layers: int) -> tuple[int, ...]:
    """Rows of each Engram layer's shared embedding (the sum of its heads' primes)."""
    return tuple(sum(sum(order) for order in layer)
                 for layer in head_primes(vocab_size, max_ngram_size, n_heads, n_layers))
