"""Evaluation: embedding export, FAISS search, exact retrieval metrics, protocols, reports, plots.

Submodules: ``embed`` (sharded jitted inference -> :class:`Embeddings`), ``index`` (FAISS),
``metrics`` (exact mAP / CMC, Cluster Compactness, centroid accuracy), ``verification`` (1:1),
``protocols`` (the paper's benchmarks, one :class:`Protocol` record each), ``report``
(results.json / results.md, aggregation), ``audit`` (re-identification attackers), ``leakage``;
not imported here: ``plots`` (t-SNE figure: it loads matplotlib) and ``sets`` (the runner's
evaluation sets: it builds them from the data sources).
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
from jaxforget.eval.protocols import PROTOCOLS, PairSet, Protocol, get_protocol, required_sets, run_protocols
from jaxforget.eval.report import aggregate, aggregate_markdown, load_results, results_markdown, write_results
from jaxforget.eval.verification import kfold_accuracy, tar_at_far, verify_bin, verify_pairs

__all__ = [
    "Embeddings", "embed", "embed_model", "make_embed_fn",
    "IndexConfig", "build_index", "measure_recall", "recall_at_k", "search",
    "centroid_accuracy", "compactness_score", "identity_centroids", "retrieval_metrics", "topk_retrieval_metrics",
    "PROTOCOLS", "PairSet", "Protocol", "get_protocol", "required_sets", "run_protocols",
    "aggregate", "aggregate_markdown", "load_results", "results_markdown", "write_results",
    "kfold_accuracy", "tar_at_far", "verify_bin", "verify_pairs",
]
