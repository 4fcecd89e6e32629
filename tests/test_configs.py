"""The config files: what each method runs with, per preset, and that loading one stays light.

``configs/<method>.py`` writes every ``method.*`` value; ``jaxforget/config.py`` holds the shared
blocks. The tables below pin every resolved hyper-parameter of every config and preset (the
values runs had before the configs were written out; a change must be deliberate).
"""

import dataclasses
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from jaxforget import config as config_lib
from jaxforget import methods

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))
PRESETS = ("", "demo", "celeba", "orl", "celeba_wild")

# Fields every config has, so that they can be overridden for any method.
COMMON = {
    "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup_steps", "steps",
    "step_boundaries", "step_factor", "clip_norm", "bn_mode", "flip", "trainable",
    "salun_fraction", "project", "retain_weight", "retain_loss",
    "batch_size", "images_per_identity", "retain_batch_size", "salun_batches",
}
DISPERSION = {"margin", "augmented_views", "num_views", "view_positives", "view_crop",
              "view_jitter"}
# The method-specific fields each config writes beyond COMMON (lipschitz: the margin of the
# dispersion loss that ranks its SalUn weights).
OWN = {"hard_disp": DISPERSION, "disp": DISPERSION, "rl": {"rl_exclude_true"}, "ga": set(),
       "bs": {"bs_eps"}, "lipschitz": {"lipschitz_sigma", "lipschitz_draws", "margin"},
       "contrastive": {"contrastive_temperature"}, "retrain": set(), "finetune": set(),
       "project": set()}

# Per method: lr per preset ('', demo, celeba, orl, celeba_wild), schedule, retain_weight, salun_fraction,
# project. Every other HParams field is HParams' default in every config.
EXPECTED = {
    "hard_disp": ((0.01, 0.1, 0.05, 0.05, 0.05), "constant", 0.0, 0.0, False),
    "disp": ((0.01, 0.01, 0.05, 0.05, 0.05), "constant", 0.0, 0.0, False),
    "rl": ((1e-3,) * 5, "constant", 1.0, 0.0, False),
    "ga": ((1e-4,) * 5, "constant", 0.0, 0.0, False),
    "bs": ((1e-4,) * 5, "constant", 0.0, 0.0, False),
    "lipschitz": ((1e-3,) * 5, "constant", 1.0, 0.5, False),
    "contrastive": ((1e-3,) * 5, "constant", 1.0, 0.0, False),
    "retrain": ((0.01,) * 5, "linear", 0.0, 0.0, False),
    "finetune": ((0.01,) * 5, "linear", 0.0, 0.0, False),
    "project": ((1e-3,) * 5, "constant", 0.0, 0.0, True),
}
# Every method, every preset (fields a config does not write resolve to the same values).
SAME_EVERYWHERE = dict(
    optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=5e-4, warmup_steps=0,
    step_boundaries=(0.5, 0.75), step_factor=0.1, clip_norm=0.0, bn_mode="train", flip=True,
    trainable="", retain_loss="cosface", margin=0.0, augmented_views=False, num_views=2,
    view_positives="identity", view_crop=0.1, view_jitter=0.2, rl_exclude_true=False,
    bs_eps=4.0 / 255.0, lipschitz_sigma=0.1, lipschitz_draws=4, contrastive_temperature=0.1)
# The exceptions to SAME_EVERYWHERE, per (method, preset): the demo's hard dispersion trains the
# output layer with BatchNorm frozen (configs/hard_disp.py, docs/RESULTS.md section 1).
EXCEPTIONS = {("hard_disp", "demo"): dict(trainable="fc/|features/", bn_mode="frozen")}
# Per preset, every method: steps, batch_size, images_per_identity, retain_batch_size.
BUDGET = {"": (1000, 32, 4, 32), "demo": (150, 32, 4, 32), "celeba": (20, 30, 3, 30),
          "orl": (20, 20, 4, 20), "celeba_wild": (100, 32, 4, 32)}


def load(name: str, preset: str | None = None):
    return config_lib.load_config_file(ROOT / "configs" / f"{name}.py", preset)


def test_every_config_file_is_known():
    assert set(CONFIG_FILES) == set(EXPECTED)


@pytest.mark.parametrize("name", CONFIG_FILES)
@pytest.mark.parametrize("preset", PRESETS)
def test_resolved_hparams_are_the_written_values(name, preset):
    c = load(name, preset)
    assert c.method.name == name and c.config_method == name
    hp = methods.resolve_hparams(c.method, methods.get_method(name))
    resolved = dataclasses.asdict(hp)
    written = c.method.to_dict()
    # Every HParams field the config writes is taken from it, with its type.
    for field in resolved.keys() & written.keys():
        value = written[field]
        assert resolved[field] == value and type(resolved[field]) is type(value), field
    # The config writes the common fields and its method's own, nothing of another method's.
    hparam_fields = set(resolved)
    assert set(written) - {"name"} == COMMON | OWN[name]
    assert (COMMON | OWN[name]) - {"batch_size", "images_per_identity", "retain_batch_size",
                                   "salun_batches"} <= hparam_fields
    # The values that differ between methods and presets.
    lrs, schedule, retain_weight, salun_fraction, project = EXPECTED[name]
    assert (hp.lr, hp.schedule, hp.retain_weight, hp.salun_fraction, hp.project) == (
        lrs[PRESETS.index(preset)], schedule, retain_weight, salun_fraction, project)
    steps, batch, k, retain_batch = BUDGET[preset]
    assert (hp.steps, written["batch_size"], written["images_per_identity"],
            written["retain_batch_size"], written["salun_batches"]) == (
        steps, batch, k, retain_batch, 8)
    # Everything else: the same in every config, but for the listed exceptions.
    expected = {**SAME_EVERYWHERE, **EXCEPTIONS.get((name, preset), {})}
    assert {f: resolved[f] for f in SAME_EVERYWHERE} == expected
    assert hparam_fields == SAME_EVERYWHERE.keys() | {
        "lr", "schedule", "retain_weight", "salun_fraction", "project", "steps"}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_shared_blocks(preset):
    c = load("ga", preset)
    # The paper's setting takes the architecture and sizes from model.init (the user's checkpoint).
    expect = {"": ("auto", "celeba", None), "demo": ("iresnet18", "synthetic", (32, 32)),
              "celeba": ("mobilefacenet", "celeba", (112, 96)),
              "orl": ("mobilefacenet", "orl", (112, 96)),
              "celeba_wild": ("mobilefacenet", "celeba_wild", (112, 96))}[preset]
    size = c.model.input_size
    assert (c.model.name, c.data.name, size and tuple(size)) == expect
    if preset in ("celeba", "orl", "celeba_wild"):
        assert c.model.init == config_lib.MOBILEFACENET_WEIGHTS
    # Everything but the method block is the same for every method.
    shared = c.to_dict()
    for name in CONFIG_FILES:
        other = load(name, preset).to_dict()
        for key in ("method", "config_method"):
            shared.pop(key, None), other.pop(key)
        assert other == shared, name


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown config argument 'paper': the configs accept "
                                         r":demo, :celeba, :orl, :celeba_wild or nothing"):
        load("ga", "paper")


def test_method_config_checks_its_tables():
    per_preset = {p: {"lr": 1.0} for p in PRESETS}
    with pytest.raises(ValueError, match=r"\['lr'\] set both for every preset and per preset"):
        config_lib.method_config("ga", {"lr": 2.0}, "demo", per_preset)
    with pytest.raises(ValueError, match=r"\['steps'\] set both by the config and by the shared"):
        config_lib.method_config("ga", {"steps": 2}, "demo")
    with pytest.raises(ValueError, match="per_preset must give"):
        config_lib.method_config("ga", {}, "", {"": {}})


def test_loading_a_config_does_not_import_jax():
    code = (
        "import pathlib, sys\n"
        "from jaxforget.config import load_config_file\n"
        "for p in sorted(pathlib.Path('configs').glob('*.py')):\n"
        "    for a in ('', 'demo', 'celeba', 'orl', 'celeba_wild'): load_config_file(p, a)\n"
        "heavy = sorted(k for k in sys.modules if k.split('.')[0] in ('jax', 'flax', 'optax'))\n"
        "assert not heavy, heavy\n"
        "assert 'jaxforget.methods' not in sys.modules\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def parse_cli(name: str, *overrides: str):
    """The config as ``python -m jaxforget.main --config=configs/<name>.py:orl <overrides>``."""
    argv = ["prog", f"--config={ROOT / 'configs' / name}.py:orl", *overrides]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "config", flag_values=fv,
                                             lock_config=True, sys_argv=argv)
    fv(argv)
    return holder.value


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_common_fields_can_be_overridden_for_every_method(name):
    c = parse_cli(name, "--config.method.optimizer=adamw", "--config.method.trainable=linear1/",
                  "--config.method.bn_mode=frozen", "--config.method.salun_fraction=0.25",
                  "--config.method.retain_weight=2", "--config.method.steps=7",
                  "--config.method.lr=0.5", "--config.method.project=True")
    assert (c.method.optimizer, c.method.trainable, c.method.bn_mode, c.method.salun_fraction,
            c.method.retain_weight, c.method.steps, c.method.lr, c.method.project) == (
        "adamw", "linear1/", "frozen", 0.25, 2.0, 7, 0.5, True)
    assert isinstance(c.method.retain_weight, float)


def test_method_fields_can_be_overridden_for_their_methods_only():
    assert parse_cli("hard_disp", "--config.method.margin=-0.3").method.margin == -0.3
    assert parse_cli("disp", "--config.method.augmented_views=True").method.augmented_views
    assert parse_cli("bs", "--config.method.bs_eps=0.01").method.bs_eps == 0.01
    assert parse_cli("rl", "--config.method.rl_exclude_true=True").method.rl_exclude_true
    assert parse_cli("lipschitz", "--config.method.lipschitz_draws=2").method.lipschitz_draws == 2
    c = parse_cli("contrastive", "--config.method.contrastive_temperature=0.5")
    assert c.method.contrastive_temperature == 0.5
    with pytest.raises((AttributeError, KeyError, flags.Error)):
        parse_cli("ga", "--config.method.bs_eps=0.01")


def test_another_method_name_is_refused(tmp_path):
    """The guard on ``config_method``: the file's values belong to its own method."""
    r = subprocess.run(
        [sys.executable, "-m", "jaxforget.main", "--config=configs/ga.py:demo",
         f"--workdir={tmp_path}", "--config.method.name=rl"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert re.search(r"method.name='rl'.*'ga'.*configs/rl.py", r.stderr), r.stderr
    assert "Traceback" not in r.stderr


def test_load_config_file_names_a_missing_file_and_its_neighbours():
    with pytest.raises(FileNotFoundError, match=r"nope\.py.*'ga'"):
        config_lib.load_config_file(ROOT / "configs" / "nope.py", "demo")
    assert load("ga", "demo").method.name == "ga"


def test_celeba_wild_preset_is_the_papers_protocol():
    c = load("hard_disp", "celeba_wild")
    assert (c.data.name, c.forget.num_identities, c.forget.min_images) == ("celeba_wild", 10, 20)
    assert (c.retain.min_images, c.retain.max_identities) == (2, 0)  # every other person
    assert c.pretrain.steps > 0 and c.pretrain.head_init == "imprint"  # the fine-tuned Original
    assert (c.pretrain.batch_size, c.pretrain.images_per_identity) == (32, 4)
    assert {"retain_search", "cfp_fp", "cfp_fp_verification", "cfp_ff_verification"} <= set(c.evals)
    assert c.data.root.endswith("celeba_wild") and c.data.cfp_root.endswith("cfp")
    assert c.data.distractors.startswith("celeba:")


@pytest.mark.slow
@pytest.mark.real_data
def test_celeba_wild_preset_runs_end_to_end(shared, tmp_path):
    """``configs/hard_disp.py:celeba_wild`` on the first 200 CelebA-wild faces and a small CFP
    tree: the fine-tuned Original and the unlearned model both get every protocol (the extended
    galleries with 20 distractors)."""
    from jaxforget import experiment
    from tests.data_fixtures import cfp_tree

    shared("data", "celeba_wild")
    shared("weights", "mobilefacenet_casia")
    cfp_tree(tmp_path / "cfp")
    c = load("hard_disp", "celeba_wild")
    c.data.cfp_root = str(tmp_path / "cfp")
    c.data.max_images = 200
    c.eval.flip = False  # flipped views are tested elsewhere; here every protocol matters
    c.data.num_distractors = 20  # the extended galleries' CelebA-subset people: 20 of ~9,800
    c.forget.num_identities = 2
    c.pretrain.steps = 2
    c.pretrain.warmup_steps = 1
    c.method.steps = 1
    c.eval.tsne = False
    c.eval.batch_size = 32  # the sets hold 2-75 images: smaller padded batches (the preset's 128)
    c.cache_dir = str(tmp_path / "cache")
    out = experiment.run(c, tmp_path / "run")
    for state in ("original", "unlearned"):
        assert set(c.evals) <= set(out[state]), state
        assert out[state]["cfp_ff_verification"]["num_folds"] == 2
    assert list((tmp_path / "cache" / "base_models").iterdir())  # the Original is cached
