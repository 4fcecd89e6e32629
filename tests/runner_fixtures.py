"""The tiny experiment config shared by the runner tests (``tests/test_runner.py``,
``tests/test_multihost.py``, ``tests/test_validation.py``, ``tests/test_eval_sets.py``,
``tests/test_workdir.py``)."""

import pathlib

from jaxforget import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(method: str, preset: str = ""):
    """``configs/<method>.py:<preset>``, as ``--config=configs/<method>.py:<preset>`` gives it."""
    return config_lib.load_config_file(ROOT / "configs" / f"{method}.py", preset)


def tiny_config(method="hard_disp"):
    """The demo config at toy scale: a 16x16 IResNet-18 of width 1/8 on 16 synthetic identities,
    2 pretraining steps and 1 unlearning step (seconds on a CPU), checkpoints at the end of each
    phase. Hard dispersion runs the paper's recipe (the whole backbone, BatchNorm in train mode),
    not the demo's output layer, so that the runner tests train every layer and update BatchNorm
    statistics across devices."""
    c = load_config(method, "demo")
    if method == "hard_disp":
        c.method.trainable, c.method.bn_mode, c.method.lr = "", "train", 0.01
    c.model.width_mult = 0.125
    c.model.input_size = (16, 16)
    c.model.embedding_size = 32
    c.data.num_identities = 16
    c.data.images_per_identity = 6
    c.forget.num_identities = 4
    c.pretrain.steps = 2
    c.pretrain.batch_size = 16
    c.method.steps = 1
    c.method.batch_size = 8
    c.method.retain_batch_size = 8
    c.eval.batch_size = 32
    c.eval.tsne = False
    c.train.checkpoint_every = 100  # only at the end: each save costs about a second
    return c
