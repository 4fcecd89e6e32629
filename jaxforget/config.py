"""Shared experiment blocks; each file in ``configs/`` adds its method's hyper-parameters.

``configs/<method>.py`` writes every ``method.*`` value its method runs with (per preset where
they differ) and calls :func:`method_config`; paper values are used where the paper states them,
and where its text lost a value the file gives the chosen one and its reason. This module holds
what every method shares: the model, head, data, split, pretraining, evaluation and training-loop
blocks, and the presets' data and model parts. It imports nothing but ``ml_collections`` and
``os``, so loading a config file does not start JAX.

Run ``python -m jaxforget.main --config=configs/hard_disp.py --config.data.root=...``; any field can
be overridden as ``--config.<path>=<value>``. Configs are locked: a misspelt field is an error.

Presets (the config-string argument, ``configs/<method>.py:<preset>``):

* ``''``: the paper's setting (CelebA; set ``data.root`` and ``model.init``, whose checkpoint
  decides the architecture and sizes: an InsightFace IResNet-50 at 112x112 in the paper);
* ``demo``: synthetic identities and a small IResNet (no data needed), base model trained first;
* ``celeba`` / ``orl``: the real MobileFaceNet on ../shared's faces;
* ``celeba_wild``: the paper's CelebA protocol at its scale (~22 photos per person) with the real
  MobileFaceNet fine-tuned first, CFP-FP / CFP-FF retain protocols (:func:`celeba_wild_overrides`).

Every method in a preset shares one step budget and one batch layout (:data:`STEP_BUDGET`): the
paper's 1,000 steps of 32-image batches (P x K = 8 x 4) at paper scale; 150 in the demo; 20 on
the real MobileFaceNet, where the forget set holds 3-5 train images per identity
and the loss saturates within ~20 steps (configs/hard_disp.py). On the CelebA subset the batches
are 10 identities x 3 images (it has 3-4 train images per forget identity), on ORL 5 x 4. On
CelebA-wild (about 11 train photos per forget person) 8 x 4 and 100 steps.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import ml_collections

# The project's shared folder beside the checkout (real faces and the real MobileFaceNet).
SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
MOBILEFACENET_WEIGHTS = os.path.join(SHARED, "weights", "mobilefacenet_casia", "068.ckpt")


def shared_config() -> ml_collections.ConfigDict:
    """Every block but ``method``, at paper scale (IResNet-50, 112x112, CelebA)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Non-empty: run one experiment per seed (a different forget set each) and report mean +- std.
    c.seeds = ()
    # The base model's seed: each person's train / test halves, and the pretraining's batch order
    # and head. -1: the run's seed (a base model per seed). A fixed value fine-tunes one base model
    # that every seed shares, as the paper fine-tunes one Original; the forget people are still
    # drawn by `seed`.
    c.base_seed = -1
    # The name of this run's rows in results and tables ('' = the method's name); a variant of a
    # method (another trainable subset, say) gets its own row beside the method's.
    c.label = ""
    # Multi-host: 'auto' (Cloud TPU / SLURM) or 'host:port'; empty for one host.
    c.distributed = ml_collections.ConfigDict(
        dict(coordinator_address="", num_processes=0, process_id=-1)
    )

    # What model.init fixes (architecture, width, input size, embedding size) is taken from it
    # when left unset ('auto' / None); a value set here or on the command line must agree with the
    # checkpoint (a one-line error names the value to use). Without model.init: the family's
    # defaults (iresnet50 for 'auto'; 112x112 -> 512 for IResNets, 112x96 -> 128 MobileFaceNet).
    c.model = ml_collections.ConfigDict(
        dict(
            name="auto",  # iresnet18|34|50|100|200, mobilefacenet, mbf; 'auto': model.init's
            width_mult=ml_collections.FieldReference(None, field_type=float),  # channel multiplier
            input_size=ml_collections.FieldReference(None, field_type=tuple),  # (H, W)
            embedding_size=ml_collections.FieldReference(None, field_type=int),
            dtype="float32",  # compute dtype; 'bfloat16' keeps float32 parameters
            dropout=0.0,
            init="",  # converted orbax dir, InsightFace .pth / .onnx, or MobileFaceNet .ckpt
            # BatchNorms an ONNX export folded into its convs (a zoo model's): 'recalibrate'
            # re-creates them from the run's train photos (same function, real statistics for
            # bn_mode='train'); 'keep' leaves them exact identities (train with bn_mode='frozen').
            folded_bn="recalibrate",
        )
    )
    # CosFace head (class weights). The released backbones carry no head for the training
    # identities, so the head is imprinted: row c = normalised mean embedding of identity c's train
    # images under the original model, unless a fine-tuned base model brings its own.
    c.head = ml_collections.ConfigDict(dict(kind="cosface", s=64.0, m=0.4))

    c.data = ml_collections.ConfigDict(
        dict(
            # celeba | celeba_wild | vggface2 | orl | folder | recordio | synthetic
            name="celeba",
            root="",  # dataset folder (recordio: the .rec file, or the folder holding train.rec)
            annotations="",  # identity file (CelebA: identity_CelebA.txt under root by default)
            landmarks="",  # five-point landmarks file; empty: look under root, else fixed crop
            align=True,  # align with the landmarks when there are any
            # Synthetic identities (data.name='synthetic').
            num_identities=120,
            images_per_identity=12,
            # Distractors for the extended protocols: an identity-less image folder,
            # 'other_identities' (this data set's images of people outside the split), or
            # '<data name>:<root>' (another data set's people not in this one, e.g.
            # 'celeba:/data/celeba'; identities compared by their ids).
            distractors="",
            num_distractors=0,  # other_identities / <data name>:<root>: how many to draw (0: all)
            # CFP (Data/Images, Protocol/, landmarks_5pt.txt) for the protocols cfp_fp,
            # cfp_fp_verification and cfp_ff_verification.
            cfp_root="",
            max_images=0,  # 0: all; otherwise read only the first N records (quick tries)
            # InsightFace verification packs (.bin: lfw.bin, cfp_fp.bin, agedb_30.bin) for the
            # protocol 'verification' (every pack) or 'verification:<file stem>' (one).
            verification_bins=(),
        )
    )

    c.forget = ml_collections.ConfigDict(
        dict(
            num_identities=10,  # chosen by seed among identities with >= min_images images
            identities=(),  # or an explicit list of raw identity ids
            min_images=10,
            train_fraction=0.5,  # each forget identity: train half unlearns, test half queries
        )
    )
    c.retain = ml_collections.ConfigDict(
        dict(
            min_images=3,  # retain identities with fewer images are left out
            train_fraction=0.5,
            max_identities=0,  # 0: every eligible identity; else a seeded subset (speed)
        )
    )

    # Base-model fine-tuning before unlearning (CosFace on every train identity). Used by the demo
    # to make its own base model; the result is cached in cache_dir and reused.
    c.pretrain = ml_collections.ConfigDict(
        dict(
            steps=0,
            lr=0.1,
            batch_size=64,
            images_per_identity=4,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=5e-4,
            schedule="cosine",
            warmup_steps=50,
            # CosFace head at the start: 'random' rows, or 'imprint' (each identity's normalised
            # mean train embedding under the model being fine-tuned: a pretrained model starts
            # from a head that already agrees with it, instead of being pulled to random rows).
            head_init="random",
            bn_mode="train",  # BatchNorm statistics: 'train' (updated) or 'frozen'
        )
    )

    c.evals = ("forget_base", "retain_search", "reid_audit")
    c.eval = ml_collections.ConfigDict(
        dict(batch_size=64, flip=True, tsne=True, index="exact", tsne_identities=10)
    )
    # curve_steps: also evaluate every protocol on the model of these steps (rows 'step_<n>' of
    # results.json / results.md between the Original and the unlearned model: a step curve).
    c.train = ml_collections.ConfigDict(dict(checkpoint_every=200, log_every=25, cs_every=100,
                                             curve_steps=()))
    # Shared between runs: fine-tuned base models and the original model's embeddings, keyed by
    # everything they depend on (model, data, split, settings). '' -> <workdir>/../cache.
    c.cache_dir = ""
    c.export_torch = False  # also write the unlearned backbone as an InsightFace .pth
    c.export_onnx = False  # ... and as ONNX (InsightFace's loader; needs the onnx extra)
    return c


def demo_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The embedded default: synthetic identities, a small IResNet, base model trained first.

    100 synthetic identities x 24 images (12 train / 12 test each; ``jaxforget/data/synthetic.py``:
    each identity has 96 independent pattern values besides its shared shape and colour traits);
    an IResNet-18 at width 0.25 on 32x32 inputs (128-d) is first fine-tuned with CosFace for 600
    steps, cached, then unlearned with the method's settings. CosFace at s=8, m=0.2: a low scale
    keeps the loss pushing the classes apart until they spread over the embedding (measured,
    docs/RESULTS.md section 1: at s=32 the closed-form projection of the ten forget identities
    costs the others 16.9 points of retain mAP, at s=8 0.4; the paper's s=64, m=0.4 converge
    poorly on so small a model and data set). Sized for a few minutes on a 2-core CPU.
    """
    c.model.name = "iresnet18"
    c.model.width_mult = 0.25
    c.model.input_size = (32, 32)
    c.model.embedding_size = 128
    c.head.s = 8.0
    c.head.m = 0.2
    c.data.name = "synthetic"
    c.data.num_identities = 100
    c.data.images_per_identity = 24
    c.forget.num_identities = 10
    c.forget.min_images = 4
    c.retain.min_images = 4
    c.pretrain.steps = 600
    c.eval.batch_size = 128
    c.train.checkpoint_every = 100
    c.train.log_every = 25
    c.train.cs_every = 50
    return c


def mobilefacenet_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The real pretrained MobileFaceNet (CASIA-WebFace, 112x96, 128-d) from ../shared."""
    c.model.name = "mobilefacenet"
    c.model.input_size = (112, 96)
    c.model.embedding_size = 128
    c.model.init = MOBILEFACENET_WEIGHTS
    return c


def celeba_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's CelebA study on ../shared's 10,000-image subset with the real MobileFaceNet.

    Forget 10 of the identities with the most images (>= 6 in the subset; 27 candidates), train /
    test halves; retain = 300 (seeded) of the other identities with >= 3 images (all 1,161 with
    --config.retain.max_identities=0); retrieval over all their images.
    """
    mobilefacenet_overrides(c)
    c.data.name = "celeba"
    c.data.root = os.path.join(SHARED, "data", "celeba_subset")
    c.forget.num_identities = 10
    c.forget.min_images = 6
    c.retain.min_images = 3
    c.retain.max_identities = 300  # of 1,161 eligible; keeps a CPU run to minutes
    c.evals = ("forget_base", "retain_search:retain_all", "retain_search", "reid_audit")
    c.eval.batch_size = 128
    c.train.checkpoint_every = 100
    c.train.cs_every = 50
    return c


def orl_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """ORL faces (40 people x 10 images) with the real MobileFaceNet: forget 5, retain 35."""
    mobilefacenet_overrides(c)
    c.data.name = "orl"
    c.data.root = os.path.join(SHARED, "data", "orl_faces")
    c.forget.num_identities = 5
    c.forget.min_images = 10
    c.retain.min_images = 2
    c.evals = ("forget_base", "retain_search:retain_all", "retain_search", "reid_audit")
    c.eval.batch_size = 100
    c.train.checkpoint_every = 100
    c.train.cs_every = 50
    return c


def celeba_wild_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's CelebA protocol on ../shared's CelebA-wild with the real MobileFaceNet.

    CelebA-wild: 199 CelebA people with every photo of each, aligned to the 112x112 template
    (``data.name='celeba_wild'``; the 112x96 model input is the template's central 96 columns).
    Forget 10 people per seed among the 142 with >= 20 photos, train / test halves; retain = every
    other person (>= 2 photos), train / test halves. Original = the CASIA MobileFaceNet fine-tuned
    with CosFace on the train halves of all 199 people (``pretrain``; ``base_seed`` fixes the halves,
    so one cached Original serves every seed, as in the paper): 300 steps
    of 8 x 4, SGD lr 0.001 with 30 warm-up steps and cosine decay, BatchNorm frozen, the head
    imprinted from the model's own mean train embeddings. Measured (seed 0, 100-step probes; CFP-FP
    search on CFP's first 100 people): lr 0.01 blows up (loss 1.8 -> 38 by step 20; retain mAP
    88.4 -> 66.4, CFP-FP mAP 52.8 -> 22.4), lr 0.003 costs CFP-FP 6.7 points, lr 0.001 keeps every
    metric within a point; BatchNorm in train mode on 32-image batches starts at loss 7.5 instead
    of 1.8 (batch statistics are another network); a random head instead of the imprinted one
    collapses the model even at lr 0.001 (CS 0.98 everywhere, retain 88.4 -> 51.6). The Original
    this gives (seed 0; the CASIA model's value in brackets): forget mAP 98.85 (98.66), retain mAP
    88.99 (88.39), CFP-FP search mAP 41.64 (43.25), CFP-FP / CFP-FF verification 80.93 / 98.60
    (80.83 / 98.87); pretraining takes ~12-16 min on 2 CPU cores (docs/RESULTS.md section 4).

    Retain protocols: retrieval on the retain people's unseen photos (``retain_search``), CFP-FP
    frontal-to-profile search and the 10-fold CFP-FP / CFP-FF verification (``data.cfp_root``).
    The extended galleries (``forget_extended``, ``cfp_fp_extended``, the paper's Table 3) add
    the CelebA subset's people outside CelebA-wild (``data.distractors``; about 9,800 images, the
    paper adds 75,000 IJB-B ones). ``--config.data.root`` may point to any tree of the same
    layout.
    """
    mobilefacenet_overrides(c)
    c.data.name = "celeba_wild"
    c.data.root = os.path.join(SHARED, "data", "celeba_wild")
    c.data.cfp_root = os.path.join(SHARED, "data", "cfp")
    c.data.distractors = "celeba:" + os.path.join(SHARED, "data", "celeba_subset")
    c.forget.num_identities = 10
    c.forget.min_images = 20
    c.retain.min_images = 2
    c.retain.max_identities = 0
    c.pretrain.steps = 300
    c.pretrain.lr = 0.001
    c.pretrain.batch_size = 32
    c.pretrain.images_per_identity = 4
    c.pretrain.schedule = "cosine"
    c.pretrain.warmup_steps = 30
    c.pretrain.head_init = "imprint"
    c.pretrain.bn_mode = "frozen"
    c.base_seed = 0  # one Original for every seed
    # The paper's Tables 1-3: forget and CFP-FP search, each also with the distractor gallery,
    # centroid accuracy / CS, and CFP verification; plus the re-identification audit.
    c.evals = ("forget_base", "forget_extended", "retain_search", "cfp_fp", "cfp_fp_extended",
               "cfp_fp_verification", "cfp_ff_verification", "reid_audit")
    c.eval.batch_size = 128
    c.train.checkpoint_every = 100
    c.train.cs_every = 50
    return c


CONFIG_ARGS = {"demo": demo_overrides, "celeba": celeba_overrides, "orl": orl_overrides,
               "celeba_wild": celeba_wild_overrides}
PRESETS = ("",) + tuple(CONFIG_ARGS)


def preset_name(arg: str | None) -> str:
    """The config-string argument (``configs/x.py:demo``), checked: one of :data:`PRESETS`."""
    arg = (arg or "").strip()
    if arg and arg not in CONFIG_ARGS:
        raise ValueError(
            f"unknown config argument {arg!r}: the configs accept "
            f"{', '.join(':' + a for a in CONFIG_ARGS)} or nothing"
        )
    return arg


def base_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The shared blocks of a preset (:func:`shared_config` with the preset's overrides)."""
    arg = preset_name(arg)
    c = shared_config()
    if arg:
        CONFIG_ARGS[arg](c)
    return c


# Per preset, every method: the step budget and the P x K batches (forget batch of P identities x
# ``images_per_identity`` images; ``retain_batch_size`` for the methods with a retain term).
STEP_BUDGET = {
    "": dict(steps=1000, batch_size=32, images_per_identity=4, retain_batch_size=32),
    "demo": dict(steps=150, batch_size=32, images_per_identity=4, retain_batch_size=32),
    "celeba": dict(steps=20, batch_size=30, images_per_identity=3, retain_batch_size=30),
    "orl": dict(steps=20, batch_size=20, images_per_identity=4, retain_batch_size=20),
    "celeba_wild": dict(steps=100, batch_size=32, images_per_identity=4, retain_batch_size=32),
}


def method_config(
    name: str,
    hparams: dict[str, object],
    arg: str | None = None,
    per_preset: dict[str, dict[str, object]] | None = None,
) -> ml_collections.ConfigDict:
    """A run's config: the preset's shared blocks plus ``method`` = ``name``, ``hparams``, the
    preset's :data:`STEP_BUDGET` and, if given, the preset's entry of ``per_preset`` (what else
    differs per preset for this method, e.g. the learning rate; one entry for every preset).

    ``method`` holds exactly the fields given (locked configs: only those can be overridden), so a
    config file writes every field its method reads besides the budget (``salun_batches``: forget
    batches whose summed gradient ranks the weights for SalUn). ``config_method`` records
    ``name``: overriding ``method.name`` alone would run another method with these values (e.g. GA
    at hard dispersion's learning rate), so the runner refuses a ``method.name`` that differs.
    """
    arg = preset_name(arg)
    if per_preset is not None and set(per_preset) != set(PRESETS):
        raise ValueError(f"config {name!r}: per_preset must give {PRESETS}, got {tuple(per_preset)}")
    extra = per_preset[arg] if per_preset is not None else {}
    budget = STEP_BUDGET[arg]
    for what, keys in (("for every preset and per preset", set(hparams) & set(extra)),
                       ("by the config and by the shared STEP_BUDGET",
                        (set(hparams) | set(extra)) & set(budget))):
        if keys:
            raise ValueError(f"config {name!r}: {sorted(keys)} set both {what}")
    c = base_config(arg)
    c.method = ml_collections.ConfigDict(dict(name=name, **hparams, **budget, **extra))
    c.config_method = name
    return c


def load_config_file(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the config file at ``path``: what ``--config=PATH[:ARG]`` gives.

    For tools and tests that pick configs by name (``configs/<method>.py``); a missing file is a
    ``FileNotFoundError`` that lists the config files beside it.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        known = sorted(q.stem for q in path.parent.glob("*.py")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"no config file {path}; config files there: {known}")
    spec = importlib.util.spec_from_file_location(f"jaxforget_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)

