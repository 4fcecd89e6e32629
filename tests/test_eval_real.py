"""Verification on ../shared/data/lfw_small.bin with the real pretrained MobileFaceNet (CASIA)."""

import numpy as np
import pytest

from jaxforget.eval import protocols as P
from jaxforget.eval.embed import embed_model


@pytest.mark.slow
@pytest.mark.real_data
def test_lfw_small_verification_with_mobilefacenet(shared):
    ckpt = shared("weights", "mobilefacenet_casia", "068.ckpt")
    binp = shared("data", "lfw_small.bin")
    pytest.importorskip("torch", reason="reading the PyTorch checkpoint needs torch")
    from jaxforget.data.pipeline import eval_dataset
    from jaxforget.data.formats.verification_bin import VerificationBinSource
    from jaxforget.models import load_pretrained

    bundle, variables = load_pretrained({"name": "mobilefacenet", "init": str(ckpt)})
    source = VerificationBinSource(str(binp), output_size=bundle.input_size)
    batches = eval_dataset(source, batch_size=8, labels=np.zeros(len(source), np.int32), num_threads=1)
    emb = embed_model(bundle, variables, batches, flip="add", progress="lfw_small")
    assert emb.emb.shape == (len(source), bundle.embedding_size)
    np.testing.assert_array_equal(emb.image_ids, np.arange(len(source)))  # pipeline order kept
    # the file as shipped: its pairs
    res = P.run_protocols(["verification:lfw_small"], {"lfw_small": P.PairSet(emb.emb, source.issame)})
    res = res["verification/lfw_small"]
    n = len(source.issame)
    print(f"\nlfw_small.bin as shipped: {n} pairs ({int(source.issame.sum())} genuine), 10-fold accuracy "
          f"{100 * res['acc']:.2f}%")
    # lfw_small.bin holds genuine pairs only, which makes accuracy trivial; add impostor pairs by
    # pairing each pair's first image with the second image of the pair n/2 further on. Neighbouring
    # pairs repeat people here (pairs 1-2, 4-5 and 6-8 show one person each, checked by looking at
    # the images), so a shift of one pair would make false impostors; a shift of n/2 does not.
    a, b = emb.emb[0::2], emb.emb[1::2]
    mixed = np.empty((4 * n, emb.dim), np.float32)
    mixed[0 : 2 * n : 2], mixed[1 : 2 * n : 2] = a, b
    mixed[2 * n :: 2], mixed[2 * n + 1 :: 2] = a, np.roll(b, -(n // 2), axis=0)
    issame = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    order = np.stack([np.arange(n), np.arange(n) + n], 1).ravel()  # interleave so every fold has both
    rows = np.stack([2 * order, 2 * order + 1], 1).ravel()
    res2 = P.verification(P.PairSet(mixed[rows], issame[order]))
    gen = np.einsum("nd,nd->n", a, b)
    imp = np.einsum("nd,nd->n", a, np.roll(b, -(n // 2), axis=0))
    print(
        f"lfw_small + {n} impostor pairs, MobileFaceNet (CASIA, flip-add): {res2['num_pairs']} pairs, "
        f"10-fold accuracy {100 * res2['acc']:.2f}% (+- {100 * res2['acc_std']:.2f}), mean threshold "
        f"{res2['threshold']:.3f}; genuine cos mean {gen.mean():.3f} (min {gen.min():.3f}), impostor cos "
        f"mean {imp.mean():.3f} (max {imp.max():.3f})"
    )
    # a model reported at 99.3% on LFW separates genuine from impostor pairs clearly
    assert gen.mean() > imp.mean() + 0.2
    assert res2["acc"] >= 0.9
