"""semknobs.registry against a real MLflow sqlite store: save, log, register, alias, reload."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from semknobs import registry, tracking
from semknobs.attributes import AttributeScaler
from semknobs.config import to_mapping
from semknobs.errors import ModelError, SemknobsError
from semknobs.evaluation.samples import generate
from semknobs.model_folder import read_config, read_folder, save_model_dir
from semknobs.models.attgan import AttGANConfig, Discriminator, Generator
from semknobs.names import MODEL_NAMES
from semknobs.serving import attgan_model

TINY = AttGANConfig(
    img_size=32,
    enc_layers=3,
    dec_layers=3,
    dis_layers=3,
    enc_dim=8,
    dec_dim=8,
    dis_dim=8,
    dis_fc_dim=16,
    shortcut_layers=1,
    inject_layers=1,
)
NAME = "semknobs-attgan-test"

# Runs in a fresh interpreter: nothing from this process (imports, mlflow state) carries over.
FRESH = textwrap.dedent(
    """
    import sys
    import mlflow
    import numpy as np
    import torch
    from semknobs.serving import attgan_model

    uri, data, out = sys.argv[1:]
    inputs = dict(np.load(data))
    gen, config = attgan_model.load(uri)
    x = torch.from_numpy(inputs["images"]).float().div(127.5).sub(1)[:, None]
    with torch.no_grad():
        a = torch.from_numpy(inputs["attributes"])
        y = gen(x, a, a)
    direct = ((y.squeeze(1).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    served = mlflow.pyfunc.load_model(uri).predict(inputs)
    np.savez(out, direct=direct, served=served, kind=attgan_model.KIND, training=gen.training)
    """
)


def _tiny_model(seed: int, cfg: AttGANConfig = TINY) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    gen, dis = Generator(cfg), Discriminator(cfg)
    for module in gen.modules():  # non-default running stats: buffers must travel too
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        for scale in gen.noise:  # non-zero noise scales (zero at initialisation)
            scale.weight.uniform_(-1, 1)
    return gen.eval(), dis


def _save(path: Path, seed: int = 0, cfg: AttGANConfig = TINY) -> tuple[Path, Generator]:
    gen, dis = _tiny_model(seed, cfg)
    scaler = AttributeScaler((0.0,) * 4, (10.0,) * 4)
    config = {
        "model": to_mapping(cfg),
        "scaler": scaler.to_dict(),
        "img_size": cfg.img_size,
        "metrics": {"test/psnr": np.float32(21.5)},
    }
    folder = save_model_dir(
        path, kind="attgan", weights={"generator": gen, "discriminator": dis}, config=config
    )
    return folder, gen


def _log(folder: Path, name: str, **kwargs) -> tuple[object, str]:
    with tracking.stage_run("test", params={}) as run:
        version = registry.log_model_dir(
            folder, name="attgan", spec=attgan_model.SPEC, registered_name=name, **kwargs
        )
    return version, run.info.run_id


def test_save_model_dir_layout(tmp_path: Path) -> None:
    folder, gen = _save(tmp_path / "attgan")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "discriminator.safetensors",
        "generator.safetensors",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "attgan" and config["weights"] == ["discriminator", "generator"]
    assert config["model"] == to_mapping(TINY) and config["metrics"]["test/psnr"] == 21.5
    loaded, full = attgan_model.load(folder)
    assert not loaded.training and full.scaler["size"] == {"low": 0.0, "high": 10.0}
    for key, value in gen.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_projection_critic_travels_with_its_folder(tmp_path: Path) -> None:
    """The discriminator of a folder whose critic judges attributes is rebuilt with them."""
    cfg = dataclasses.replace(TINY, dis_projection=True)
    folder, _ = _save(tmp_path / "attgan", cfg=cfg)
    _, dis = _tiny_model(0, cfg)
    config = read_folder(folder, attgan_model.AttGANFolder, kind=attgan_model.KIND)
    loaded = attgan_model.build(folder, config, "discriminator")
    assert loaded.projection is not None
    for key, value in dis.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # a folder written before the option existed has no such key: a critic without projection
    old = _save(tmp_path / "old")[0]
    written = json.loads((old / "config.json").read_text())
    del written["model"]["dis_projection"]
    (old / "config.json").write_text(json.dumps(written))
    config = read_folder(old, attgan_model.AttGANFolder, kind=attgan_model.KIND)
    assert attgan_model.build(old, config, "discriminator").projection is None


def test_local_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        attgan_model.load(tmp_path / "empty")
    with pytest.raises(ModelError, match="does not exist"):
        attgan_model.load(tmp_path / "missing")
    gen, _ = _tiny_model(0)
    other = save_model_dir(tmp_path / "reg", kind="regressor", weights={"net": gen}, config={})
    with pytest.raises(ModelError, match="'regressor' model, expected a 'attgan'"):
        attgan_model.load(other)
    assert issubclass(ModelError, SemknobsError)


def test_register_and_load_in_fresh_process(store: Path) -> None:
    folder, gen = _save(store / "models" / "attgan")
    version, run_id = _log(folder, NAME, tags={"purpose": "test"}, description="tiny AttGAN")
    assert version is not None and int(version.version) == 1
    assert version.run_id == run_id and version.description == "tiny AttGAN"
    assert version.source.startswith("models:/m-")  # an MLflow 3 LoggedModel
    assert version.aliases == ["candidate"]
    assert version.tags["semknobs.kind"] == "attgan"
    assert version.tags["semknobs.run_id"] == run_id
    assert version.tags["purpose"] == "test"
    assert version.tags["semknobs.execution"] == "pytest-registry"

    from mlflow import MlflowClient

    by_alias = MlflowClient().get_model_version_by_alias(NAME, "candidate")
    assert int(by_alias.version) == 1

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, TINY.img_size, TINY.img_size), dtype=np.uint8)
    attrs = rng.random((3, 4), dtype=np.float32)
    expected = generate(gen, images, attrs, attrs)
    np.savez(store / "in.npz", images=images, attributes=attrs)
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, f"models:/{NAME}@candidate", "in.npz", "out.npz"],
        cwd=store,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(store / "out.npz")
    assert str(out["kind"]) == "attgan" and not bool(out["training"])
    assert out["served"].dtype == np.uint8 and out["served"].shape == images.shape
    np.testing.assert_array_equal(out["direct"], expected)
    np.testing.assert_array_equal(out["served"], expected)


def test_missing_model_or_alias_is_a_clear_error(store: Path) -> None:
    folder, _ = _save(store / "models" / "alias-test")
    _log(folder, "semknobs-alias-test")
    with pytest.raises(
        ModelError,
        match=r"'semknobs-alias-test' has no version with alias 'champion' \(aliases: "
        r"@candidate -> v1\)\. Load an alias it has or a version "
        r"\(models:/semknobs-alias-test/<version>\); `semknobs promote` moves @champion of",
    ):
        registry.load_model_dir("models:/semknobs-alias-test@champion")
    with pytest.raises(ModelError, match="registered model 'semknobs-nope' does not exist"):
        attgan_model.load("models:/semknobs-nope@candidate")


def test_no_champion_hint_is_a_promote_command_that_runs(store: Path, capsys) -> None:
    """The hint for a missing @champion of one of our models is the gated `semknobs promote`
    with the arguments that work (run here: it reaches the gates, which refuse: exit 1)."""
    from mlflow import MlflowClient

    from semknobs import cli

    from .conftest import ROOT

    name = MODEL_NAMES["attgan"]
    folder, _ = _save(store / "models" / "hint")

    def hinted_command() -> list[str]:
        with pytest.raises(ModelError) as err:
            registry.check_registered(f"models:/{name}@champion")
        assert "set_registered_model_alias" not in str(err.value)
        command = re.search(r"`semknobs (promote [^`]+)`", str(err.value))
        assert command, str(err.value)
        return command[1].split()

    _log(folder, name)  # v1 @candidate
    assert hinted_command() == ["promote", "--model", name]
    assert cli.main([*hinted_command(), "--params", str(ROOT / "params.yaml")]) == 1
    assert f"refused to promote {name} v1" in capsys.readouterr().err
    _log(folder, name, alias=None)  # v2, then no candidate at all
    MlflowClient().delete_registered_model_alias(name, "candidate")
    assert hinted_command() == ["promote", "--model", name, "--version", "2"]
    assert cli.main([*hinted_command(), "--params", str(ROOT / "params.yaml")]) == 1
    assert f"refused to promote {name} v2" in capsys.readouterr().err


def test_registering_twice_moves_the_alias(store: Path) -> None:
    from mlflow import MlflowClient

    name = "semknobs-attgan-twice"
    first, _ = _log(_save(store / "models" / "twice-1", seed=1)[0], name)
    second, run_id = _log(_save(store / "models" / "twice-2", seed=2)[0], name)
    assert (int(first.version), int(second.version)) == (1, 2)
    client = MlflowClient()
    assert int(client.get_model_version_by_alias(name, "candidate").version) == 2
    assert client.get_model_version(name, "1").aliases == []
    assert client.get_model_version(name, "2").run_id == run_id
    folder = registry.load_model_dir(f"models:/{name}@candidate", dst_path=store / "dl")
    assert folder.is_relative_to(store / "dl")  # MLflow 3.17: <dl>/artifacts (pyfunc artifacts)
    assert (folder / "generator.safetensors").is_file()
    config = read_config(folder, kind="attgan")
    assert config["model"] == to_mapping(TINY)
    by_run = registry.load_model_dir(f"runs:/{run_id}/attgan", dst_path=store / "dl-run")
    assert read_config(by_run)["model"] == config["model"]
    with pytest.raises(ModelError, match="'attgan' model, expected a 'regressor'"):
        read_config(by_run, kind="regressor")


@pytest.mark.parametrize("design", [{"condition": "change"}, {"noise": True}], ids=str)
def test_change_conditioned_generator_needs_the_source_attributes(store: Path, design) -> None:
    """A generator conditioned on the change (STGAN), or with noise maps scaled by it, edits
    from each tile's own attributes: the served model's signature asks for them, edits with them
    as the generator does, and refuses a request without them, naming the missing input."""
    import mlflow

    cfg = dataclasses.replace(TINY, **design)
    folder, gen = _save(store / "models" / "change", cfg=cfg)
    version, _ = _log(folder, "semknobs-attgan-change")
    uri = f"models:/{version.name}/{version.version}"
    served = mlflow.pyfunc.load_model(uri)
    names = [spec.name for spec in served.metadata.get_input_schema().inputs]
    assert names == ["images", "attributes", "source"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, cfg.img_size, cfg.img_size), dtype=np.uint8)
    attrs, source = (rng.random((3, 4), dtype=np.float32) for _ in range(2))
    out = served.predict({"images": images, "attributes": attrs, "source": source})
    np.testing.assert_array_equal(out, generate(gen, images, attrs, source))
    assert not np.array_equal(out, generate(gen, images, attrs, attrs))
    model = served.unwrap_python_model()
    with pytest.raises(ValueError, match="pass 'source'"):
        model.predict(None, {"images": images, "attributes": attrs})
    with pytest.raises(ValueError, match="source must be float32"):
        model.predict(None, {"images": images, "attributes": attrs, "source": source[:2]})
