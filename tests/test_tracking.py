"""semknobs.tracking against a real MLflow sqlite store (no MLflow mocks)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semknobs import lineage, tracking
from semknobs.tracking import EXPERIMENT_KIND

LOCK = """\
schema: '2.0'
stages:
  prepare:
    cmd: python pipelines/prepare.py
    deps:
    - path: data/raw
      hash: md5
      md5: 1111aaaa1111aaaa1111aaaa1111aaaa.dir
      size: 10
      nfiles: 2
    params:
      params.yaml:
        prepare.tile: 64
    outs:
    - path: data/tiles
      hash: md5
      md5: 2222bbbb2222bbbb2222bbbb2222bbbb.dir
      size: 20
      nfiles: 4
  train:
    cmd: python pipelines/train.py
    deps:
    - path: data/tiles
      hash: md5
      md5: 0000000000000000000000000000dead.dir
    outs:
    - path: models/regressor.safetensors
      md5: 3333cccc3333cccc3333cccc3333cccc
      size: 30
"""

DVC_FILE = """\
outs:
- md5: 4444dddd4444dddd4444dddd4444dddd
  size: 5
  hash: md5
  path: labels.csv
"""

CLEAN_ENV = ("MLFLOW_TRACKING_URI", "SEMKNOBS_EXECUTION_ID", "SEMKNOBS_EXPERIMENT")


def _git(root: Path, *args: str) -> str:
    cmd = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small git repo with a dvc.lock and a .dvc file; one sqlite store for the module."""
    root = tmp_path_factory.mktemp("project")
    (root / "dvc.lock").write_text(LOCK)
    (root / "data").mkdir()
    (root / "data" / "labels.csv.dvc").write_text(DVC_FILE)
    (root / ".gitignore").write_text("/mlruns\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "init")
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in CLEAN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(project)
    return project


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_stage_run_records_tags_params_and_artifacts(
    in_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEMKNOBS_EXECUTION_ID", "exec-123")
    many = {f"p{i:03d}": i for i in range(150)}  # more than one 100-param batch
    params = {
        "train": {"lr": 0.1, "layers": [1, 2], "flag": True, "none": None},
        "long": "x" * 7000,
        "many": many,
    }
    with tracking.stage_run(
        "train",
        params=params,
        deps=["data/tiles", "data/labels.csv", "./data/tiles/a.png", "data/nope"],
        tags={"extra": "yes"},
        root=in_project,
    ) as run:
        run_id = run.info.run_id

    uri = tracking.configure(in_project)
    assert uri == f"sqlite:///{in_project / 'mlruns' / 'mlflow.db'}"
    got = _client().get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "train"
    tags = got.data.tags
    assert tags["semknobs.stage"] == "train"
    assert tags["semknobs.execution"] == "exec-123"
    assert tags["extra"] == "yes"
    assert tags["git.commit"] == _git(in_project, "rev-parse", "HEAD")
    assert tags["git.branch"] == "main"
    assert tags["git.dirty"] == "false"
    assert tags["data.data/tiles"] == "2222bbbb2222bbbb2222bbbb2222bbbb.dir"
    assert tags["data.data/labels.csv"] == "4444dddd4444dddd4444dddd4444dddd"
    assert tags["data.data/tiles/a.png"] == "2222bbbb2222bbbb2222bbbb2222bbbb.dir"
    assert tags["data.data/nope"] == "untracked"
    assert len(tags["data.version"]) == 12

    p = got.data.params
    assert p["train.lr"] == "0.1"
    assert json.loads(p["train.layers"]) == [1, 2]
    assert p["train.flag"] == "true"
    assert p["train.none"] == "null"
    assert len(p["long"]) == 6000 and p["long"].endswith("see params.json]")
    assert all(p[f"many.{k}"] == str(v) for k, v in many.items())

    artifacts = (in_project / "mlruns" / "artifacts" / run_id / "artifacts").resolve()
    assert got.info.artifact_uri == artifacts.as_uri()
    assert json.loads((artifacts / "params.json").read_text())["long"] == "x" * 7000
    exp = _client().get_experiment(got.info.experiment_id)
    assert exp.name == "semknobs"
    assert exp.artifact_location == (in_project / "mlruns" / "artifacts").as_uri()


def test_metric_keys_with_slash_round_trip(in_project: Path) -> None:
    with tracking.stage_run("evaluate", params={}, root=in_project) as run:
        tracking.log_metrics({"val/rmse": 0.5, "train/loss": 2}, step=3)
        tracking.log_metrics({"val/rmse": 0.25}, step=4)
    client = _client()
    history = client.get_metric_history(run.info.run_id, "val/rmse")
    assert [(m.step, m.value) for m in history] == [(3, 0.5), (4, 0.25)]
    assert client.get_run(run.info.run_id).data.metrics == {"val/rmse": 0.25, "train/loss": 2.0}


def test_log_figure_and_dir(in_project: Path, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "a.txt").write_text("a")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with tracking.stage_run("report", params={}, root=in_project) as run:
        tracking.log_figure(fig, "plots/line.png")
        tracking.log_dir(tmp_path, "reports")
    assert not plt.fignum_exists(fig.number)
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "plots" / "line.png").stat().st_size > 0
    assert (artifacts / "reports" / "sub" / "b.txt").read_text() == "b"


def test_exception_marks_run_failed(in_project: Path) -> None:
    import mlflow

    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.stage_run("train", params={"a": 1}, root=in_project) as run,
    ):
        raise RuntimeError("boom")
    assert mlflow.active_run() is None
    assert _client().get_run(run.info.run_id).info.status == "FAILED"


STOPPED = """\
import time
from semknobs import tracking
with tracking.stage_run("train", params={"a": 1}) as run:
    print(run.info.run_id, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_stopped_stage_ends_its_run_killed(in_project: Path, sig: int, status: int) -> None:
    """``kill`` or Ctrl-C of a stage: its MLflow run ends KILLED, not left RUNNING."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPED], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=in_project,
    )  # fmt: skip
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id, proc.stderr.read()
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == status, proc.stderr.read()
    assert _client().get_run(run_id).info.status == "KILLED"


def test_experiment_name_from_env(in_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMKNOBS_EXPERIMENT", "semknobs-alt")
    with tracking.stage_run("prepare", params={}, root=in_project) as run:
        pass
    assert _client().get_experiment(run.info.experiment_id).name == "semknobs-alt"
    assert tracking.ensure_experiment() == run.info.experiment_id


def test_experiment_kind_is_model_development(in_project: Path) -> None:
    """MLflow's experiment-type tag, read back from the sqlite store: set on creation, added to
    an experiment created without it, a kind chosen in the UI left alone."""
    tracking.configure(in_project)
    created = tracking.ensure_experiment("kind-new")
    tags = _client().get_experiment(created).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    assert (tracking.EXPERIMENT_KIND_TAG, tracking.EXPERIMENT_KIND) == (
        "mlflow.experimentKind",
        "custom_model_development",
    )
    old = _client().create_experiment("kind-old")  # as an earlier version of semknobs made it
    assert tracking.EXPERIMENT_KIND_TAG not in _client().get_experiment(old).tags
    assert tracking.ensure_experiment("kind-old") == old
    assert _client().get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    _client().set_experiment_tag(old, tracking.EXPERIMENT_KIND_TAG, "genai_development")
    tracking.ensure_experiment("kind-old")
    assert _client().get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"
    page = tracking.experiment_page("http://127.0.0.1:5000/", old)
    assert page == f"http://127.0.0.1:5000/#/experiments/{old}/runs?workflowType=machine_learning"


def test_deleted_experiment_is_restored(in_project: Path) -> None:
    tracking.configure(in_project)
    exp_id = tracking.ensure_experiment("gone")
    _client().delete_experiment(exp_id)
    assert tracking.ensure_experiment("gone") == exp_id
    assert _client().get_experiment(exp_id).lifecycle_stage == "active"


def test_configure_follows_root_but_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; that must not pin the first root.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a = tracking.configure(tmp_path / "a")
    assert a == tracking.configure(tmp_path / "a") == f"sqlite:///{tmp_path}/a/mlruns/mlflow.db"
    assert (tmp_path / "a" / "mlruns").is_dir()
    assert tracking.configure(tmp_path / "b") == f"sqlite:///{tmp_path}/b/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.configure(tmp_path / "c") == "http://tracking.example:5000"
    assert not (tmp_path / "c").exists()


def test_git_info_dirty_and_outside_repo(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q", "-b", "dev")
    info = tracking.git_info(tmp_path)  # no commit yet
    assert info == {"git.commit": "unknown", "git.dirty": "false", "git.branch": "dev"}
    (tmp_path / "f").write_text("x")
    assert tracking.git_info(tmp_path)["git.dirty"] == "true"
    assert tracking.git_info(tmp_path / "missing")["git.commit"] == "unknown"


PIPELINE = """\
stages:
  train:
    cmd: python train.py
    deps: [src/train.py, "${data.raw}"]
    outs:
      - models
      - "${data.tuned}":
          cache: false
    metrics:
      - metrics/train.json:
          cache: false
  each:
    foreach: [a, b]
    do:
      cmd: echo ${item}
      outs:
        - out/${item}.txt
"""


@pytest.mark.parametrize("below", ["", "project/"])
def test_git_dirty_counts_sources_not_what_dvc_writes(tmp_path: Path, below: str) -> None:
    """A real repo (the project at its top level, or in a subfolder of a bigger one): what
    `dvc repro` rewrites -- dvc.lock, declared outs (templated from params.yaml), metrics, the
    .gitignore beside an out -- leaves git.dirty false; any source edit makes it true."""
    top = tmp_path
    root = top / below
    files = {
        "dvc.yaml": PIPELINE,
        "dvc.lock": "schema: '2.0'\n",
        "params.yaml": "data: {raw: data/raw, tuned: tuned/train.yaml}\n",
        "src/train.py": "print('v1')\n",
        "metrics/train.json": "{}\n",
        "tuned/train.yaml": "{}\n",
        "models/.gitignore": "/model.bin\n",
        "out/a.txt": "a\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _git(top, "init", "-q", "-b", "main")
    _git(top, "add", ".")
    _git(top, "commit", "-q", "-m", "init")
    assert tracking.git_info(root)["git.dirty"] == "false"

    # what DVC writes during a repro
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (root / "metrics" / "train.json").write_text('{"rmse": 1}\n')
    (root / "tuned" / "train.yaml").write_text("lr: 0.1\n")  # a templated out
    (root / "models" / "card.txt").write_text("new file inside a folder out\n")
    (root / "metrics" / ".gitignore").write_text("/cached.json\n")
    assert lineage.changed_sources(root) == []
    assert tracking.git_info(root)["git.dirty"] == "false"

    # sources: a module, params, the pipeline, an untracked file, a foreach out (not resolved)
    for rel, text in (
        ("src/train.py", "print('v2')\n"),
        ("params.yaml", "data: {raw: data/raw, tuned: tuned/train.yaml, x: 1}\n"),
        ("dvc.yaml", PIPELINE + "# edited\n"),
        ("src/helper.py", "X = 1\n"),
        ("out/a.txt", "b\n"),
        ("models.txt", "a sibling of an out, not inside it\n"),
    ):
        before = (root / rel).read_text() if (root / rel).exists() else None
        (root / rel).write_text(text)
        assert lineage.changed_sources(root) == [below + rel], rel
        assert tracking.git_info(root)["git.dirty"] == "true", rel
        if before is None:
            (root / rel).unlink()
        else:
            (root / rel).write_text(before)
    _git(top, "mv", f"{below}src/train.py", f"{below}src/fit.py")  # a staged rename
    assert lineage.changed_sources(root) == [f"{below}src/fit.py"]
    _git(top, "mv", f"{below}src/fit.py", f"{below}src/train.py")
    assert tracking.git_info(root)["git.dirty"] == "false"


def test_dvc_written_of_the_repo_pipeline() -> None:
    """The repo's own dvc.yaml: every tracked file DVC rewrites is an out or dvc.lock."""
    from .conftest import ROOT

    written = lineage.dvc_written(ROOT)
    for rel in ("dvc.lock", "metrics/explain.json", "tuned/regressor.yaml", "data/synthetic/raw"):
        assert rel in written, rel
    assert "params.yaml" not in written and "dvc.yaml" not in written
    assert not any(p.startswith(("src/", "pipelines/")) for p in written)


def test_timing_keys_are_declared_once() -> None:
    timings = ["train/wall_s", "train/wall_s_this_run", "oracle/wall_s", "default/oracle/wall_s"]
    timings += ["tune/wall_s", "trial/wall_s", "train/steps_per_s", "train/tiles_per_s"]
    results = ["test/psnr", "control/slope_size", "train/steps", "oracle/step", "a/wall", "per_s"]
    assert [k for k in timings + results if lineage.is_timing(k)] == timings
    assert lineage.reproducible(dict.fromkeys(timings + results, 1.0)) == dict.fromkeys(
        results, 1.0
    )


def test_execution_id_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMKNOBS_EXECUTION_ID", "my-exec")
    assert tracking.execution_id() == "my-exec"


def _stage_project(root: Path) -> Path:
    """A real DVC project with two stages that each print execution_id()."""
    code = "from semknobs.tracking import execution_id; print(execution_id())"
    cmd = shlex.join([sys.executable, "-c", code])
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for args in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(args, cwd=root, check=True, env=env)
    (root / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"a": {"cmd": cmd}, "b": {"cmd": cmd}}})
    )
    return root


def test_execution_id_under_dvc_repro_is_shared_by_its_stages(tmp_path: Path) -> None:
    """DVC exports DVC_STAGE to the commands it starts: the stages of one `dvc repro` share
    one id (its process group's); a second repro, started as a terminal would start it (a new
    process group), gets another. Both under a shell that forks and one that execs the stage
    command. No /proc walking."""
    env = {k: v for k, v in os.environ.items() if k != "SEMKNOBS_EXECUTION_ID"}
    env["DVC_NO_ANALYTICS"] = "1"
    root = _stage_project(tmp_path)
    for shell in ("/bin/sh", "/bin/bash"):
        runs = []
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-m", "dvc", "repro", "-f"],
                cwd=root,
                env={**env, "SHELL": shell},
                capture_output=True,
                text=True,
                check=True,
                start_new_session=True,
            ).stdout
            runs.append([line for line in out.split() if line.startswith("dvc-")])
        (a1, b1), (a2, b2) = runs
        assert a1 == b1 and a2 == b2 and a1 != a2, (shell, runs)
        assert a1.split("-", 1)[1].isdigit()


def test_execution_id_outside_dvc_is_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEMKNOBS_EXECUTION_ID", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    code = "from semknobs.tracking import execution_id; print(execution_id(), execution_id())"
    outs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert all(a == b and a.startswith("run-") for a, b in outs)
    assert outs[0][0] != outs[1][0]  # separate processes, no shared pipeline execution
    monkeypatch.setenv("DVC_STAGE", "train")
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-fig")
    assert tracking.execution_id() == "dvc-exp-lucky-fig"


def test_data_version_lock_dvc_file_and_untracked(project: Path, tmp_path: Path) -> None:
    lock = project / "dvc.lock"
    tags = tracking.data_version(
        ["data/tiles", "data/raw", "models/regressor.safetensors", "data/labels.csv", "x/y"],
        lock_path=lock,
    )
    assert tags["data.data/tiles"] == "2222bbbb2222bbbb2222bbbb2222bbbb.dir"  # out beats dep
    assert tags["data.data/raw"] == "1111aaaa1111aaaa1111aaaa1111aaaa.dir"
    assert tags["data.models/regressor.safetensors"] == "3333cccc3333cccc3333cccc3333cccc"
    assert tags["data.data/labels.csv"] == "4444dddd4444dddd4444dddd4444dddd"
    assert tags["data.x/y"] == "untracked"
    # The version depends on the set of (path, hash) pairs, not their order.
    again = tracking.data_version(
        ["x/y", "data/labels.csv", "models/regressor.safetensors", "data/raw", "data/tiles"],
        lock_path=lock,
    )
    assert again["data.version"] == tags["data.version"]
    assert tracking.data_version(["data/tiles"], lock)["data.version"] != tags["data.version"]

    # Relative paths resolve against the working directory, like DVC's.
    cwd = Path.cwd()
    try:
        os.chdir(project)
        assert tracking.data_version(["./data/tiles/"]) == tracking.data_version(
            ["data/tiles"], lock
        )
    finally:
        os.chdir(cwd)

    missing = tracking.data_version(["data/tiles"], lock_path=tmp_path / "dvc.lock")
    assert missing["data.data/tiles"] == "untracked"
    (tmp_path / "dvc.lock").write_text("stages: [unclosed\n")
    assert tracking.data_version(["a"], tmp_path / "dvc.lock")["data.a"] == "untracked"
    (tmp_path / "dvc.lock").write_text("- just\n- a list\n")
    assert tracking.data_version(["a"], tmp_path / "dvc.lock")["data.a"] == "untracked"
    (tmp_path / "dvc.lock").write_text("stages:\n  s:\n    outs: [3, {path: a}]\n")
    assert tracking.data_version(["a"], tmp_path / "dvc.lock")["data.a"] == "untracked"


RACE = """\
import sys, time
from pathlib import Path
from semknobs import tracking
import mlflow  # pay the import before the barrier
barrier, me = Path(sys.argv[1]), sys.argv[2]


def wait(step):
    (barrier / f"{step}-{me}").touch()
    while len(list(barrier.glob(f"{step}-*"))) < 2:
        time.sleep(0.002)


wait("init")  # both open a brand-new database at once
tracking.configure()
ids = [tracking.ensure_experiment("race")]
for k in range(5):  # then race on creating experiments in an existing database
    wait(k)
    ids.append(tracking.ensure_experiment(f"race-{k}"))
print(" ".join(ids))
"""


def test_concurrent_ensure_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes against a brand-new database both get the same experiment id."""
    for name in CLEAN_ENV:
        monkeypatch.delenv(name, raising=False)
    db_dir = tmp_path / "store"
    uri = f"sqlite:///{db_dir / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env["MLFLOW_TRACKING_URI"] = uri
    (tmp_path / "barrier").mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(tmp_path / "barrier"), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    first, second = (out.split() for out, _ in results)
    assert first == second
    assert len(set(first)) == 6

    # The env override wins over the root; artifacts go beside the sqlite file.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.configure(tmp_path / "elsewhere") == uri
    assert not (tmp_path / "elsewhere").exists()
    assert tracking.ensure_experiment("race") == first[0]
    exp = _client().get_experiment_by_name("race")
    assert exp.artifact_location == (db_dir / "artifacts").as_uri()
