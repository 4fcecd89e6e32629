"""Real-face checks: the targets the project holds on real faces, with the real MobileFaceNet.

The CASIA MobileFaceNet (``../shared/weights/mobilefacenet_casia/068.ckpt``) on ORL faces
(``../shared/data/orl_faces``, 40 identities x 10 images): 5 forget identities drawn with seed 0,
each split into 5 train images (unlearning data) and 5 test images (queries). Hard dispersion on
the output layer and the closed-form projection each

* bring the forget test images' leave-one-out compactness CS below 0.2 (issue 4's target; the
  Original's is 0.69),
* take their ``forget_base`` mAP (each test image queries the other 24 forget test images) down
  by at least 0.2 (0.3 for the projection),
* and move the retain identities' mAP -- leave-one-out retrieval over all 35 x 10 = 350 retain
  images -- by at most 0.03.

Issue 4's other target, forget mAP halved, is not one the project holds on ORL (the best of every
sweep is 0.50 for 0.11 of retain mAP; docs/RESULTS.md sections 2, 3e), and it sits below what
image similarity alone gives there: raw pixels retrieve these forget test photos at mAP 0.88 and an
untrained MobileFaceNet at 0.84 (section 3f). It is not tested.

Set-up and metrics live in ``studies/orl_setup.py`` (shared with this test), the hyper-parameter
sweep in ``studies/orl_sweep.py``. Embeddings are single-view (no flip averaging) to keep the CPU
time down; the model, the split and the Original's numbers are loaded once for both tests.

Hard dispersion trains only the output layer (``method.trainable='linear1/'``: the 1x1 convolution
512 -> 128 and its BatchNorm, BatchNorm statistics frozen). On this split it disperses the forget
test photos further than training the whole backbone (CS 0.11 against 0.25 after 20 full steps)
at a tenth of the retain cost (-0.01 against -0.03), and each step is about ten times cheaper.
"""

from __future__ import annotations

import time

import pytest

from studies import orl_setup

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

# Chosen with studies/orl_sweep.py (docs/RESULTS.md, section 3e, has the sweep). The output layer
# alone saturates the loss by step 80 (loss < 1e-3); measured on this split (seed 0): forget CS
# 0.268 / 0.173 / 0.154 / 0.135 / 0.110 after 20 / 30 / 50 / 60 / 100 steps, forget mAP 0.997 ->
# 0.562 and retain mAP 0.961 -> 0.954 after 60.
STEPS = 60
LR = 0.05                 # SGD, momentum 0.9, weight decay 5e-4, constant schedule
MARGIN = 0.0              # m_d of the hard dispersion loss
BN_MODE = "frozen"        # eval-mode BatchNorm, running statistics unchanged
TRAINABLE = "linear1/"    # only MobileFaceNet's output layer (1x1 conv + BatchNorm) trains
IDENTITIES_PER_BATCH = 5  # P: every forget identity in every batch
IMAGES_PER_IDENTITY = 4   # K: 4 of each identity's 5 train images

# The targets held (issue 4's CS target and retain bound).
MAX_FORGET_CS = 0.2
MAX_RETAIN_MAP_CHANGE = 0.03


@pytest.fixture(scope="module")
def orl(shared):
    """The model, ORL and the split, and the Original's metrics: ``(setup, before)``."""
    setup = orl_setup.load_setup(shared("weights", "mobilefacenet_casia", "068.ckpt"),
                                 shared("data", "orl_faces"), num_forget=5, seed=0)
    assert len(setup.split.forget_ids) == 5 and len(setup.split.retain_ids) == 35
    assert (len(setup.forget_train), len(setup.forget_test), len(setup.retain_all)) == (25, 25, 350)
    before = orl_setup.evaluate(setup, setup.variables)
    # The original model knows these faces: otherwise the checks below would prove nothing.
    assert before["forget"]["mAP"] > 0.9 and before["forget"]["CS"] > 2 * MAX_FORGET_CS
    assert before["retain"]["mAP"] > 0.9
    return setup, before


def _print(name, before, after):
    print(f"\n{name}\n{'':8} {'set':7} {'mAP':>6} {'R@1':>6} {'CS':>6}")
    for state, res in (("before", before), ("after", after)):
        for part in ("forget", "retain"):
            m = res[part]
            print(f"{state:8} {part:7} {m['mAP']:6.3f} {m['R@1']:6.3f} {m['CS']:6.3f}")


def test_output_layer_dispersion_takes_orl_forget_cs_below_0_2_within_the_retain_bound(orl):
    setup, before = orl
    t0 = time.perf_counter()
    cfg = orl_setup.method_config(lr=LR, bn_mode=BN_MODE, steps=STEPS, margin=MARGIN,
                                  trainable=TRAINABLE)
    variables, log = orl_setup.unlearn(setup, cfg, identities_per_batch=IDENTITIES_PER_BATCH,
                                       images_per_identity=IMAGES_PER_IDENTITY, seed=0)
    after = orl_setup.evaluate(setup, variables)
    _print(f"forget identities {setup.split.forget_ids}; hard_disp {STEPS} steps, lr {LR}, "
           f"margin {MARGIN}, bn_mode {BN_MODE}, trainable {TRAINABLE!r}, "
           f"batch {IDENTITIES_PER_BATCH}x{IMAGES_PER_IDENTITY}; "
           f"loss {log[0]['loss']:.3f} -> {log[-1]['loss']:.3f}; {time.perf_counter() - t0:.0f}s",
           before, after)
    assert log[-1]["loss"] < log[0]["loss"]
    bf, af, br, ar = before["forget"], after["forget"], before["retain"], after["retain"]
    assert af["CS"] < MAX_FORGET_CS, (bf, af)  # 0.688 -> 0.135 measured
    assert af["mAP"] <= bf["mAP"] - 0.2, (bf, af)  # 0.997 -> 0.562
    assert abs(ar["mAP"] - br["mAP"]) <= MAX_RETAIN_MAP_CHANGE, (br, ar)  # 0.961 -> 0.954


def test_identity_projection_takes_orl_forget_cs_below_0_2_within_the_retain_bound(orl):
    """Beyond the paper: the closed-form ``project`` method (no training) on the same split.

    The forget identities' centroid directions, from the original model's embeddings of their
    train images, are removed from the embedding by a map folded into the backbone's last layer.
    Measured (single view, seed 0): forget CS 0.688 -> 0.128, forget mAP 0.997 -> 0.608, retain
    mAP 0.961 -> 0.965 (docs/RESULTS.md, section 2b).
    """
    from jaxforget.methods import projection

    setup, before = orl
    train = orl_setup.embed_records(setup, setup.variables, setup.forget_train)
    variables, info = projection.project_identities(setup.bundle.family, setup.variables,
                                                    train.emb, train.labels)
    after = orl_setup.evaluate(setup, variables)
    _print(f"project: removed {info['removed_dims']} directions", before, after)
    assert info["removed_dims"] == 5
    bf, af, br, ar = before["forget"], after["forget"], before["retain"], after["retain"]
    assert af["CS"] < MAX_FORGET_CS, (bf, af)
    assert af["mAP"] <= bf["mAP"] - 0.3, (bf, af)
    assert abs(ar["mAP"] - br["mAP"]) <= MAX_RETAIN_MAP_CHANGE, (br, ar)
