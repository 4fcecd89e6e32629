"""Evaluation: embedding export, FAISS search, exact retrieval metrics, protocols, reports, plots.

Submodules: ``embed`` (sharded jitted inference -> :class:`Embeddings`), ``index`` (FAISS),
``metrics`` (exact mAP / CMC, Cluster Compactness, centroid accuracy), ``verification`` (1:1),
``protocols`` (the paper's benchmarks by name), ``report`` (results.json / results.md, aggregation),
``plots`` (t-SNE figure, imported lazily: it loads matplotlib and scikit-learn), ``leakage``.
"""

from jaxforget.eval.embed import Embeddings, embed, embed_model, make_embed_fn
from jaxforget.eval.index import IndexConfig, build_index, measure_recall, recall_at_k, search
from jaxforget.eval.metrics import (
    centroid_accuracy,
    compactness_score,
    identity_centroids,
    retrieval_metrics,
    topk_retrieval_metrics,
)
from jaxforget.eval.protocols import PROTOCOLS, PairSet, required_sets, run_protocols
from jaxforget.eval.report import aggregate, aggregate_markdown, load_results, results_markdown, write_results
from jaxforget.eval.verification import kfold_accuracy, tar_at_far, verify_bin, verify_pairs

__all__ = [
    "Embeddings", "embed", "embed_model", "make_embed_fn",
    "IndexConfig", "build_index", "measure_recall", "recall_at_k", "search",
    "centroid_accuracy", "compactness_score", "identity_centroids", "retrieval_metrics", "topk_retrieval_metrics",
    "PROTOCOLS", "PairSet", "required_sets", "run_protocols",
    "aggregate", "aggregate_markdown", "load_results", "results_markdown", "write_results",
    "kfold_accuracy", "tar_at_far", "verify_bin", "verify_pairs",
]
