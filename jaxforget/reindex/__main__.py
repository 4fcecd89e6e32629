"""Command line: re-embed a deployed gallery with a (new, unlearned) model and rebuild its index.

    python -m jaxforget.reindex MODEL GALLERY OUT [--engine=jax|onnxruntime] [--align=dlib|scrfd]
        [--shard-size=10000] [--dtype=float16] [--runner=ray --workers=N ...] [--index=FACTORY]
        [--forget=ID,ID | --split=RUN/split.json] [--before=OLD_OUT]

MODEL: an ONNX file (the export, a zoo file), a run's ``unlearned_model/`` or a ``.pth``.
GALLERY: a folder ``ROOT/<person>/<photo>``, a text file of image paths, or webdataset tar shards
(``shards/{00000..00099}.tar``). OUT: ``img_emb/``, ``metadata/``, ``index.faiss`` and
``manifest.json`` (docs/FORMATS.md section 7). Running again on the same OUT resumes; a different
model or gallery is refused. Progress on stderr, a summary (and the audit) on stdout. Needs the
``reindex`` extra (pyarrow), the ``onnx`` extra for ONNX files, ``scale`` for ``--runner=ray``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from jaxforget.data.detect import DetectorFileError, DetectorUnavailableError
from jaxforget.data.source import DataError
from jaxforget.errors import UserError
from jaxforget.eval.engines import EngineError
from jaxforget.io.onnx_format import OnnxFormatError, OnnxUnavailableError
from jaxforget.models.loading import ModelConfigError
from jaxforget.models.torch_layout import CheckpointMismatchError
from jaxforget.reindex.core import DTYPES, RUNNERS, Options, reindex, summary


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Options]:
    p = argparse.ArgumentParser(prog="python -m jaxforget.reindex", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an .onnx file, a run's unlearned_model/ directory, or a .pth/.ckpt")
    p.add_argument("gallery", help="ROOT/<person>/<photo> folder, a text file of image paths, or tar shards "
                   "(a glob or {00000..00099} pattern)")
    p.add_argument("out", help="output folder (new, empty, or an earlier re-index of the same model and gallery)")
    g = p.add_argument_group("embedding")
    g.add_argument("--engine", default="auto", choices=("auto", "jax", "onnxruntime"),
                   help="auto: onnxruntime for ONNX files, jax for checkpoints")
    g.add_argument("--align", default=None, metavar="DETECTOR",
                   help="detect and align each photo with this detector: dlib (the align extra) or scrfd "
                   "(InsightFace's, the onnx extra); default: photos are aligned crops at the model's input size")
    g.add_argument("--detector-model", default=None, metavar="ONNX",
                   help="--align=scrfd: SCRFD with keypoints as ONNX (default the buffalo_s pack's in ../shared)")
    g.add_argument("--descriptor-model", default=None, metavar="ONNX",
                   help="--align=scrfd: the recognition model SCRFD's detector loads (default the same pack's)")
    g.add_argument("--shard-size", type=int, default=10_000, help="photos per output shard (default 10000)")
    g.add_argument("--dtype", default="float32", choices=DTYPES, help="stored embeddings (the index is float32)")
    g.add_argument("--batch-size", type=int, default=64, help="photos per engine call (default 64)")
    g.add_argument("--decode-threads", type=int, default=None, help="decoding threads (default min(4, cores))")
    g.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: one a core)")
    r = p.add_argument_group("runner")
    r.add_argument("--runner", default="local", choices=RUNNERS, help="local (this process) or ray (Ray Data)")
    r.add_argument("--ray-address", default=None, help="a running Ray cluster (default: a local one for the run)")
    r.add_argument("--workers", type=int, default=2, help="Ray actors, each loading the model once (default 2)")
    r.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs a Ray actor reserves (default 1)")
    r.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs a Ray actor reserves (e.g. 1)")
    i = p.add_argument_group("index")
    i.add_argument("--index", default=None, metavar="FACTORY",
                   help="a FAISS factory string (IVF4096,Flat, HNSW32, ...); default exact up to --exact-limit")
    i.add_argument("--exact-limit", type=int, default=1_000_000,
                   help="most vectors for the exact IndexFlatIP (default 1000000); beyond: IVF")
    i.add_argument("--nprobe", type=int, default=32, help="IVF lists searched (stored in the index)")
    i.add_argument("--ef-search", type=int, default=128, help="HNSW search beam (stored in the index)")
    i.add_argument("--train-size", type=int, default=200_000, help="vectors an approximate index is trained on")
    i.add_argument("--recall-queries", type=int, default=1000, help="held vectors recall@10 is measured on")
    a = p.add_argument_group("audit")
    a.add_argument("--forget", default=None, metavar="IDS", help="comma-separated people (person folder names) "
                   "whose photos are audited in the new index")
    a.add_argument("--split", default=None, metavar="SPLIT_JSON", help="a run's split.json: audit its forget people")
    a.add_argument("--before", default=None, metavar="OLD_OUT", help="an earlier OUT (the old model's) to compare")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    opts = Options(
        engine=args.engine, align=args.align, detector_model=args.detector_model,
        descriptor_model=args.descriptor_model, shard_size=args.shard_size, dtype=args.dtype,
        batch_size=args.batch_size, decode_threads=args.decode_threads, threads=args.threads, runner=args.runner,
        ray_address=args.ray_address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, index=args.index, exact_limit=args.exact_limit, nprobe=args.nprobe,
        ef_search=args.ef_search, train_size=args.train_size, recall_queries=args.recall_queries,
        forget=args.forget, split=args.split, before=args.before, progress=not args.quiet)
    return args, opts


#: What a user can fix (a path, a file, a flag): one line, exit status 2; anything else is a bug.
USER_ERRORS = (UserError, DataError, EngineError, OnnxFormatError, OnnxUnavailableError, DetectorUnavailableError,
               DetectorFileError, CheckpointMismatchError, ModelConfigError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    args, opts = parse_args(argv)
    try:
        manifest = reindex(args.model, args.gallery, args.out, opts)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system: a folder that cannot be read or written, a full disk
        print(f"error: {e}; check the folders' permissions and free space", file=sys.stderr)
        return 2
    print(summary(manifest, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
