"""Every config builds; bad arguments fail with a clear message."""

import glob
import importlib
import os

import pytest

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIGS = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
    if not p.endswith(("common.py", "__init__.py", "demo_pretrain.py"))
)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize(
    "arg",
    [None, "mode=runlocal", "ckpt=/x.npz,data=/d,res=448", "freeze=full,dtype=float16"],
)
def test_config_builds(name, arg):
    cfg = importlib.import_module(f"configs.{name}").get_config(arg)
    assert cfg.input.batch_size > 0 and cfg.evals
    assert (cfg.total_steps is None) != (cfg.total_epochs is None)
    cfg.to_json_best_effort()  # the trainer writes it to the workdir


def test_demo_defaults():
    from configs import docvqa

    cfg = docvqa.get_config()
    # One attention-only fine-tuning run from the shipped pretrained checkpoint.
    assert cfg.demo and cfg.model_init == docvqa.DEMO_CHECKPOINT and "pretrain" not in cfg
    assert cfg.schedule[0][0] == "llm/layers/attn/.*" and cfg.schedule[-1] == (
        ".*",
        None,
    )
    assert cfg.evals["docvqa/val"]["report"] and cfg.eval_at_start
    # Another architecture than the shipped one's starts from random init.
    assert docvqa.get_config("variant=tiny_pg2").model_init == ""
    assert docvqa.get_config("res=224").model_init == ""
    real = docvqa.get_config("ckpt=/c.npz,data=/d")
    assert not real.demo and real.lr == 1e-5 and real.model_init == "/c.npz"
    assert not real.evals["docvqa/val"]["report"]


def test_demo_pretrain_config():
    from configs import demo_pretrain, docvqa

    cfg = demo_pretrain.get_config("steps=7")
    assert cfg.model_init == "" and cfg.freeze == "full" and cfg.total_steps == 7
    assert cfg.schedule == [(".*", dict(cfg.schedule[0][1]))] and cfg.synthetic == "demo_read"
    # The demo's architecture and image size: the checkpoint fits the demo it is made for.
    demo = docvqa.get_config()
    assert (cfg.model_name, cfg.input.res) == (demo.model_name, demo.input.res)
    cfg.to_json_best_effort()


def test_shipped_demo_checkpoint_is_the_scripts():
    """The .npz in the package is the file scripts/make_demo_checkpoint.py recorded making."""
    import sys

    import pg_jax
    from configs import docvqa

    sys.path.insert(0, os.path.join(os.path.dirname(CONFIG_DIR), "scripts"))
    import make_demo_checkpoint

    assert make_demo_checkpoint.ASSET == docvqa.DEMO_CHECKPOINT
    assert make_demo_checkpoint.sha256(docvqa.DEMO_CHECKPOINT) == (
        make_demo_checkpoint.RECORDED_SHA256)
    model, params = pg_jax.load(docvqa.DEMO_CHECKPOINT)
    assert model.img["image_size"] == docvqa.DEMO_RES and model.llm["depth"] == 4
    assert str(params["llm"]["embedder"]["input_embedding"].dtype) == "bfloat16"


@pytest.mark.parametrize(
    "arg, message",
    [
        ("resolution=448", "unknown config argument 'resolution'"),
        ("res=big", "res='big': expected int"),
        ("freeze=some", "freeze='some'"),
        ("mode=fast", "mode='fast'"),
    ],
)
def test_bad_arguments(arg, message):
    from configs import docvqa

    with pytest.raises(ValueError, match=message):
        docvqa.get_config(arg)


def test_locked_config_rejects_unknown_override():
    from configs import docvqa

    cfg = docvqa.get_config()
    cfg.lock()
    with pytest.raises(AttributeError):
        cfg.learning_rate = 1.0


def test_llm_layers_unroll_only_without_remat():
    """Unrolled layers are the fast layout, but remat needs the rolled scan to save memory."""
    from configs import docvqa
    from pg_jax import model_config

    real = docvqa.get_config("ckpt=/x.npz,data=/d,res=448")
    assert real.remat_policy == "nothing_saveable" and not model_config.unroll_llm_layers(real)
    real.remat_policy = "none"
    assert model_config.unroll_llm_layers(real)
    real.unroll_llm_layers = "false"
    assert not model_config.unroll_llm_layers(real)
    real.unroll_llm_layers = "sometimes"
    with pytest.raises(ValueError, match="unroll_llm_layers"):
        model_config.unroll_llm_layers(real)
    bench = docvqa.get_config("data=random,variant=pg1_3b")
    assert bench.total_steps and not bench.evals and not bench.export_npz


def test_sharding_argument_picks_the_strategy():
    from configs import docvqa

    assert docvqa.get_config(None).sharding_strategy == [(".*", "replicate()")]
    fsdp = docvqa.get_config("sharding=fsdp").sharding_strategy
    assert fsdp == [(".*", 'fsdp(axis="data")')]
    with pytest.raises(ValueError, match="sharding='zero3'"):
        docvqa.get_config("sharding=zero3")
