"""Speed and memory benchmarks: the unlearning step and embedding export against PyTorch
(``benchmark``), MobileFaceNet's depthwise convolutions (``bench_depthwise``), retrieval over large
galleries (``bench_retrieval``) and the data pipeline (``bench_data``).

Run each from the repository root as a module, e.g. ``python -m benchmarks.benchmark --quick``.
"""
