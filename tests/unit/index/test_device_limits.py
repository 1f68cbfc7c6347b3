"""The GPU side of the indexes, on CPU: a faiss GPU index returns at most `GPU_MAX_K` neighbours
per query (faiss asserts it), so `FaissIndex.search` sends the queries whose over-fetch needs
more to the CPU copy; `exact_topk` sizes its blocks itself; faiss is imported only to build."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from recolab.index import FaissIndex, csr_from_pairs, exact_topk
from recolab.index.faiss_index import GPU_MAX_K


class LimitedIndex:
    """A faiss index that, like a GPU one, refuses k above its limit."""

    def __init__(self, index, limit: int) -> None:
        self.index, self.limit, self.asked = index, limit, []

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def search(self, q, k):
        if k > self.limit:
            raise RuntimeError(f"GPU index only supports k <= {self.limit} (requested {k})")
        self.asked.append((len(q), k))
        return self.index.search(q, k)


def test_queries_beyond_the_gpu_limit_go_to_the_cpu_copy_with_the_same_results():
    g = torch.Generator().manual_seed(0)
    items, users = torch.randn(300, 8, generator=g), torch.randn(40, 8, generator=g)
    # users 0..9 have seen 30 items each, the others 2: with k=5 and a limit of 16, only the
    # heavy users need more than the limit (5 + 30 + 1 > 16)
    rows = torch.cat([torch.arange(10).repeat_interleave(30), torch.arange(10, 40).repeat(2)])
    seen = torch.cat(
        [torch.randint(1, 300, (300,), generator=g), torch.randint(1, 300, (60,), generator=g)]
    )
    exclude = csr_from_pairs(rows, seen, num_rows=40)
    reference = FaissIndex(kind="flat").build(items)
    expected = reference.search(users, 5, exclude=exclude)

    index = FaissIndex(kind="flat").build(items)
    cpu = index._index
    index._index = LimitedIndex(cpu, 16)
    index._limit, index._unlimited = 16, cpu  # as `_maybe_to_gpu` sets them for a GPU index
    got = index.search(users, 5, exclude=exclude)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])
    assert index._index.asked == [(40, 16)]
    # without exclusions, k above the limit goes to the CPU copy whole
    np.testing.assert_array_equal(index.search(users, 20)[1], reference.search(users, 20)[1])
    assert GPU_MAX_K == 2048


def test_exact_topk_blocks_do_not_change_the_result():
    g = torch.Generator().manual_seed(1)
    items, users = torch.randn(500, 8, generator=g), torch.randn(70, 8, generator=g)
    exclude = csr_from_pairs(
        torch.randint(0, 70, (200,), generator=g),
        torch.randint(1, 500, (200,), generator=g),
        num_rows=70,
    )
    a = exact_topk(users, items, k=10, exclude=exclude, batch_size=None)  # chosen by device
    b = exact_topk(users, items, k=10, exclude=exclude, batch_size=7)
    torch.testing.assert_close(a[0], b[0])  # rounding: the product's kernel follows its shape
    assert torch.equal(a[1], b[1])


def test_exact_topk_needs_no_faiss():
    code = (
        "import sys; import recolab.index, recolab.pipelines.recall; "
        "assert 'faiss' not in sys.modules, 'faiss imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
