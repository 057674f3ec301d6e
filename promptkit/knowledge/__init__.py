"""Knowledge bases: load documents, chunk, embed, index in FAISS, search with filters."""

from promptkit.knowledge.base import KnowledgeBase, UpdateStats
from promptkit.knowledge.chunking import Chunk, ChunkingConfig, chunk_text
from promptkit.knowledge.loaders import Document, loaders, scan_folder
from promptkit.knowledge.ranking import Fusion, Hit
from promptkit.knowledge.tuning import tune_fusion, tune_rerank_weight

__all__ = [
    "Chunk",
    "ChunkingConfig",
    "Document",
    "Fusion",
    "Hit",
    "KnowledgeBase",
    "UpdateStats",
    "chunk_text",
    "loaders",
    "scan_folder",
    "tune_fusion",
    "tune_rerank_weight",
]
