"""Decode + align throughput on the CelebA subset (images per second).

    python -m benchmarks.bench_data [--root ../shared/data/celeba_subset] [--n 2000] [--size 112 96]

Measures (1) one thread calling the source directly (JPEG decode, 5-point similarity fit, bilinear
warp), (2) the fixed-crop variant without landmarks, (3) the grain training pipeline (P x K batches
with flips) with its decode threads. Run it alone: the numbers depend on free CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time

from jaxforget.data.formats.celeba import CelebASource
from jaxforget.data.pipeline import train_dataset

DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "celeba_subset")


def _direct(src: CelebASource, n: int) -> float:
    src[0]  # warm up
    t = time.perf_counter()
    for i in range(n):
        src[i % len(src)]
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=DEFAULT_ROOT)
    ap.add_argument("--n", type=int, default=2000, help="images per measurement")
    ap.add_argument("--size", type=int, nargs=2, default=(112, 96), metavar=("H", "W"))
    ap.add_argument("--threads", type=int, default=None, help="pipeline decode threads (default min(4, cpus))")
    args = ap.parse_args()
    size = tuple(args.size)

    aligned = CelebASource(args.root, output_size=size)
    cropped = CelebASource(args.root, output_size=size, landmarks=None)
    print(f"CelebA subset: {len(aligned)} images, output {size}, {os.cpu_count()} CPU cores")
    r1 = _direct(aligned, args.n)
    print(f"decode + align (1 thread, source[i]):      {r1:8.0f} images/s")
    r2 = _direct(cropped, args.n)
    print(f"decode + fixed crop (1 thread, source[i]): {r2:8.0f} images/s")

    p, k = 16, 4
    ds = train_dataset(aligned, identities_per_batch=p, images_per_identity=k, seed=0, num_threads=args.threads)
    it = iter(ds)
    next(it)
    n_batches = max(1, args.n // (p * k))
    t = time.perf_counter()
    for _ in range(n_batches):
        b = next(it)
    r3 = n_batches * p * k / (time.perf_counter() - t)
    assert b["image"].shape == (p * k,) + size + (3,)
    print(f"grain P x K pipeline (decode+align+flip):  {r3:8.0f} images/s")
    print(f"SUMMARY decode_align_images_per_s={r1:.0f} pipeline_images_per_s={r3:.0f} crop_images_per_s={r2:.0f}")


if __name__ == "__main__":
    main()
