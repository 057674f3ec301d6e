"""FAISS index types by name: ``flat`` (exact), ``hnsw``, ``ivf_flat`` and ``ivf_pq``.

Vectors are normalized, so inner product is cosine similarity. Approximate types pick their
parameters from the collection size unless overridden. The index is always rebuilt from the
docstore's stored vectors, so changing the index type never re-embeds anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from promptkit.errors import KnowledgeBaseError
from promptkit.registry import Registry

IndexBuilder = Callable[[int, int, dict[str, Any]], Any]
index_types: Registry[IndexBuilder] = Registry("index type")
EXACT_BELOW = 50_000


def _faiss() -> Any:
    import faiss

    return faiss


def _flat(dim: int, n: int, params: dict[str, Any]) -> Any:
    faiss = _faiss()
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _hnsw(dim: int, n: int, params: dict[str, Any]) -> Any:
    faiss = _faiss()
    inner = faiss.IndexHNSWFlat(dim, int(params.get("m", 32)), faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = int(params.get("ef_construction", 80))
    inner.hnsw.efSearch = int(params.get("ef_search", 64))
    return faiss.IndexIDMap2(inner)


def _nlist(n: int, params: dict[str, Any]) -> int:
    return int(params.get("nlist") or max(1, min(65536, int(4 * math.sqrt(max(n, 1))))))


def _nprobe(nlist: int) -> int:
    """Lists searched per query: an eighth of them, at least 8 (never more than exist)."""
    return max(1, min(nlist, max(8, nlist // 8)))


def _ivf_flat(dim: int, n: int, params: dict[str, Any]) -> Any:
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, _nlist(n, params), faiss.METRIC_INNER_PRODUCT)
    index.nprobe = int(params.get("nprobe", _nprobe(_nlist(n, params))))
    return faiss.IndexIDMap2(index)


def _ivf_pq(dim: int, n: int, params: dict[str, Any]) -> Any:
    faiss = _faiss()
    m = int(params.get("m", next(m for m in (48, 32, 24, 16, 12, 8, 4, 2, 1) if dim % m == 0)))
    bits = int(params.get("bits", 8))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, _nlist(n, params), m, bits, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = int(params.get("nprobe", _nprobe(_nlist(n, params))))
    refine = params.get("refine")
    if refine is None:
        return faiss.IndexIDMap2(index)
    # the PQ codes pick k * k_factor candidates; a finer copy of the vectors reorders them
    if refine == "sq8":  # 8-bit scalar quantization: dim bytes per vector
        finer = faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    elif refine == "flat":  # the float32 vectors: 4 * dim bytes per vector, exact reordering
        finer = faiss.IndexFlatIP(dim)
    else:
        raise KnowledgeBaseError(f"ivf_pq refine must be 'sq8' or 'flat', not {refine!r}.")
    refined = faiss.IndexRefine(index, finer)
    refined.k_factor = float(params.get("k_factor", 4))
    refined.own_fields = refined.own_refine_index = True
    index.this.disown()
    finer.this.disown()
    return faiss.IndexIDMap2(refined)


index_types.register("flat", _flat)
index_types.register("hnsw", _hnsw)
index_types.register("ivf_flat", _ivf_flat)
index_types.register("ivf_pq", _ivf_pq)


def choose_index_type(n: int) -> str:
    return "flat" if n < EXACT_BELOW else "hnsw"


def build_index(kind: str, vectors: np.ndarray, ids: np.ndarray, params: dict[str, Any]) -> Any:
    """Build (and train, for IVF types) an index over ``vectors`` with the given int64 ids."""
    n, dim = vectors.shape if vectors.size else (0, int(params.get("dimension", 0)))
    index = index_types.get(kind)(dim, n, params)
    inner = _faiss().downcast_index(index.index)
    if not inner.is_trained:
        ivf = _faiss().downcast_index(inner.base_index) if hasattr(inner, "base_index") else inner
        needed = getattr(ivf, "nlist", 1) * (4 if kind == "ivf_pq" else 1)
        if n < max(needed, 256 if kind == "ivf_pq" else 1):
            raise KnowledgeBaseError(
                f"Index type {kind!r} needs at least {max(needed, 256)} vectors to train, the "
                f"knowledge base has {n}. Use index='flat' (exact) for small collections."
            )
        inner.train(vectors)
    if n:
        index.add_with_ids(vectors, ids)
    return index


def search_index(
    index: Any, vectors: np.ndarray, k: int, allowed: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids of the ``k`` nearest vectors; with ``allowed``, only among those ids."""
    if allowed is None:
        return index.search(vectors, k)
    selector = _faiss().IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
    return index.search(vectors, k, params=search_params(index, selector))


def search_params(index: Any, selector: Any) -> Any:
    """Search parameters carrying an ID selector, of the right class for the index type."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):
        # IndexRefine ignores a top-level selector, and the id map translates only that one, so
        # the candidate stage gets the selector translated to internal ids by hand
        translated = faiss.IDSelectorTranslated(index.id_map, selector)
        base = faiss.SearchParametersIVF()
        base.nprobe = faiss.downcast_index(inner.base_index).nprobe
        base.sel = translated
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = inner.k_factor
        params.base_index_params = base
        params.referenced = (base, translated, selector)  # SWIG keeps no references itself
        return params
    if isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = inner.hnsw.efSearch
    elif isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = inner.nprobe
    else:
        params = faiss.SearchParameters()
    params.sel = selector
    params.referenced = selector
    return params


def measure_recall(
    index: Any, vectors: np.ndarray, k: int = 10, sample: int = 200, seed: int = 0
) -> float:
    """recall@k of ``index`` against exact search, on a sample of its own vectors as queries."""
    faiss = _faiss()
    n = len(vectors)
    if n == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    queries = vectors[rng.choice(n, size=min(sample, n), replace=False)]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    k = min(k, n)
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    id_map = faiss.vector_to_array(index.id_map)
    truth_ids = id_map[truth]
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth_ids, found, strict=True))
    return hits / (len(queries) * k)
