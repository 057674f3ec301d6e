"""FAISS index types by name: ``flat`` (exact), ``hnsw``, ``ivf_flat``, ``ivf_sq8`` and ``ivf_pq``.

Vectors are normalized, so inner product is cosine similarity. Approximate types pick their
parameters from the collection size unless overridden. The IVF types carry chunk ids natively and
take additions and removals without retraining; ``flat`` and ``hnsw`` (and ``ivf_pq`` with
``refine``) sit in an ID map. The index is always rebuilt from the store's vectors, so changing
the index type never re-embeds anything.
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
    return _faiss().IndexFlatIP(dim)


def _hnsw(dim: int, n: int, params: dict[str, Any]) -> Any:
    faiss = _faiss()
    inner = faiss.IndexHNSWFlat(dim, int(params.get("m", 32)), faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = int(params.get("ef_construction", 80))
    inner.hnsw.efSearch = int(params.get("ef_search", 64))
    return inner


def _hnsw_sq8(dim: int, n: int, params: dict[str, Any]) -> Any:
    """HNSW over 8-bit scalar-quantized vectors: a quarter of ``hnsw``'s memory, near-exact
    inner products; the default for large collections."""
    faiss = _faiss()
    inner = faiss.IndexHNSWSQ(
        dim, faiss.ScalarQuantizer.QT_8bit, int(params.get("m", 32)), faiss.METRIC_INNER_PRODUCT
    )
    inner.hnsw.efConstruction = int(params.get("ef_construction", 64))
    # search effort chosen on validation queries of benchmarks/kb_scale.py: 128 reaches recall@10
    # 0.95 up to a few hundred thousand vectors, 192 at a million
    inner.hnsw.efSearch = int(params.get("ef_search", 128 if n < 500_000 else 192))
    return inner


def _nlist(n: int, params: dict[str, Any]) -> int:
    return int(params.get("nlist") or max(1, min(65536, int(4 * math.sqrt(max(n, 1))))))


def _nprobe(nlist: int) -> int:
    """Lists searched per query: an eighth of them, at least 8 and at most 64."""
    return max(1, min(nlist, max(8, min(64, nlist // 8))))


def _ivf_flat(dim: int, n: int, params: dict[str, Any]) -> Any:
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, _nlist(n, params), faiss.METRIC_INNER_PRODUCT)
    index.nprobe = int(params.get("nprobe", _nprobe(_nlist(n, params))))
    return index


def _ivf_sq8(dim: int, n: int, params: dict[str, Any]) -> Any:
    """IVF over 8-bit scalar-quantized vectors: dim bytes each, near-exact inner products."""
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer,
        dim,
        _nlist(n, params),
        faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
    )
    index.nprobe = int(params.get("nprobe", _nprobe(_nlist(n, params))))
    return index


def _ivf_pq(dim: int, n: int, params: dict[str, Any]) -> Any:
    faiss = _faiss()
    m = int(params.get("m", next(m for m in (48, 32, 24, 16, 12, 8, 4, 2, 1) if dim % m == 0)))
    bits = int(params.get("bits", 8))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, _nlist(n, params), m, bits, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = int(params.get("nprobe", _nprobe(_nlist(n, params))))
    refine = params.get("refine")
    if refine is None:
        return index
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
    return refined


index_types.register("flat", _flat)
index_types.register("hnsw", _hnsw)
index_types.register("hnsw_sq8", _hnsw_sq8)
index_types.register("ivf_flat", _ivf_flat)
index_types.register("ivf_sq8", _ivf_sq8)
index_types.register("ivf_pq", _ivf_pq)


def choose_index_type(n: int) -> str:
    return "flat" if n < EXACT_BELOW else "hnsw_sq8"


def new_index(kind: str, dim: int, n: int, params: dict[str, Any]) -> Any:
    """An empty index of ``kind`` for ``n`` vectors; types without native ids get an ID map."""
    faiss = _faiss()
    index = index_types.get(kind)(dim, n, params)
    return index if isinstance(index, faiss.IndexIVF) else faiss.IndexIDMap2(index)


def _trainable(index: Any) -> Any:
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return faiss.downcast_index(inner.base_index) if hasattr(inner, "base_index") else inner


def needs_training(index: Any) -> int:
    """How many vectors ``index`` needs to train (0 when it needs none)."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if inner.is_trained:
        return 0
    if isinstance(inner, faiss.IndexHNSW):  # only the scalar quantizer's ranges to learn
        return 1
    ivf = _trainable(index)
    pq = isinstance(ivf, faiss.IndexIVFPQ)
    return max(getattr(ivf, "nlist", 1) * (4 if pq else 1), 256 if pq else 1)


def train_index(index: Any, kind: str, sample: np.ndarray) -> None:
    needed = needs_training(index)
    if needed and len(sample) < needed:
        raise KnowledgeBaseError(
            f"Index type {kind!r} needs at least {needed} vectors to train, the knowledge base "
            f"has {len(sample)}. Use index='flat' (exact) for small collections."
        )
    if needed:
        index.train(sample)


def build_index(kind: str, vectors: np.ndarray, ids: np.ndarray, params: dict[str, Any]) -> Any:
    """Build (and train, for IVF types) an index over ``vectors`` with the given int64 ids."""
    n, dim = vectors.shape if vectors.size else (0, int(params.get("dimension", 0)))
    index = new_index(kind, dim, n, params)
    train_index(index, kind, vectors)
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
    wrapped = isinstance(index, faiss.IndexIDMap)
    inner = faiss.downcast_index(index.index) if wrapped else faiss.downcast_index(index)
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


def measure_recall(index: Any, queries: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """recall@k of ``index`` on ``queries`` against the exact neighbour ids ``truth``."""
    if len(queries) == 0:
        return 1.0
    _, found = index.search(queries, k)
    hits = sum(
        len(set(t[:k]) & set(f)) for t, f in zip(truth.tolist(), found.tolist(), strict=True)
    )
    return hits / (len(queries) * min(k, truth.shape[1]))
