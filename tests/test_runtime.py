"""The torch-free runtime: `import lightsv` without torch, the onnx backend, bad model files."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lightsv
from lightsv.errors import CheckpointError, ConfigError, StoreError
from lightsv.verifier import DEFAULT_MODEL, EXAMPLES, Verifier, example_clips

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from lightsv.runtime import DEFAULT_ONNX, DEFAULT_ONNX_INT8, OnnxModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def blocker(module: str) -> str:
    """A sitecustomize.py that makes `import <module>` fail the way it does where it is not installed."""
    return textwrap.dedent(
        f"""
        import sys

        class _Blocked:
            def find_spec(self, name, path=None, target=None):
                if name == {module!r} or name.startswith({module + "."!r}):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
                return None

        sys.meta_path.insert(0, _Blocked())
        """
    )


BLOCK_TORCH = blocker("torch")


def run(args, env_dir=None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if env_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(env_dir), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, **kwargs)


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "sitecustomize.py").write_text(BLOCK_TORCH)
    return folder


def test_import_and_help_do_not_import_torch():
    code = textwrap.dedent(
        """
        import sys, contextlib, io
        import lightsv
        from lightsv.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--help"]) == 0 and main(["verify", "--help"]) == 0 and main(["export", "--help"]) == 0
        assert "torch" not in sys.modules, "torch was imported"
        assert lightsv.Verifier and lightsv.LightsvError
        lightsv.build_model  # the lazy attribute loads torch on use
        assert "torch" in sys.modules
        """
    )
    result = run(["-c", code])
    assert result.returncode == 0, result.stderr


def test_enroll_verify_score_without_torch_match_torch(tmp_path, no_torch):
    assert run(["-c", "import torch"], no_torch).returncode != 0  # the blocker works
    speakers = example_clips()
    enroll, test = speakers["ls19"][:2], speakers["ls19"][2]
    other = speakers["ls27"][2]
    db = tmp_path / "s.db"
    lightsv_cli = ["-m", "lightsv"]
    out = run([*lightsv_cli, "enroll", "--db", str(db), "ls19", *map(str, enroll), "--json"], no_torch)
    assert out.returncode == 0, out.stderr
    got = {}
    for clip in (test, other):
        out = run([*lightsv_cli, "verify", "--db", str(db), "ls19", str(clip), "--json"], no_torch)
        assert out.returncode == 0, out.stderr
        got[clip] = json.loads(out.stdout)["score"]
    listing = run([*lightsv_cli, "list", "--db", str(db), "--json"], no_torch)
    assert listing.returncode == 0 and json.loads(listing.stdout)[0]["count"] == 2
    trials = tmp_path / "trials.txt"
    names = [p.relative_to(EXAMPLES).as_posix() for p in (enroll[0], test, other)]
    trials.write_text(f"1 {names[0]} {names[1]}\n0 {names[0]} {names[2]}\n")
    scores = tmp_path / "scores.txt"
    out = run(
        [*lightsv_cli, "score", str(trials), "--wav-root", str(EXAMPLES), "--out", str(scores), "--json"], no_torch
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model_id"] == OnnxModel(DEFAULT_ONNX).model_id

    # The same work on the torch backend, in this process.
    with Verifier.load(backend="torch") as v:
        v.enroll("ls19", enroll)
        for clip, score in got.items():
            assert abs(v.verify("ls19", clip).score - score) <= 1e-4
        e = v.embed_many([enroll[0], test, other])
    want = [float(e[0] @ e[1]), float(e[0] @ e[2])]
    written = [float(line.split()[2]) for line in scores.read_text().splitlines()]
    np.testing.assert_allclose(written, want, atol=1e-4)
    # and the store the torch-free process wrote is the torch backend's too (same model id)
    with Verifier.load(db=db, backend="torch") as v:
        assert abs(v.verify("ls19", test).score - got[test]) <= 1e-4


def test_shipped_onnx_is_the_shipped_checkpoint():
    """Fails when default.pt changed without `lightsv export --ship` regenerating the ONNX files."""
    from lightsv.checkpoint import load_model
    from lightsv.verifier import model_id

    model, extra = load_model(DEFAULT_MODEL, return_extra=True)
    fp32, int8 = OnnxModel(DEFAULT_ONNX), OnnxModel(DEFAULT_ONNX_INT8)
    assert fp32.model_id == model_id(model)
    assert int8.metadata["source_model_id"] == model_id(model) and int8.model_id == f"{model_id(model)}/int8"
    assert fp32.calibration == int8.calibration == extra.get("calibration")
    assert fp32.metadata["lightsv_version"] == lightsv.__version__
    assert fp32.dim == int8.dim == model.embed_dim
    assert DEFAULT_ONNX_INT8.stat().st_size < DEFAULT_ONNX.stat().st_size < 2_000_000


def test_int8_agrees_with_fp32_and_keeps_its_own_store(tmp_path):
    clips = [c for cs in example_clips().values() for c in cs]
    fp32 = Verifier.load(DEFAULT_ONNX, db=tmp_path / "a.db")
    int8 = Verifier.load(DEFAULT_ONNX_INT8)
    a, b = fp32.embed_many(clips), int8.embed_many(clips)
    assert ((a * b).sum(1)).min() >= 0.97
    fp32.enroll("ls19", clips[:2])
    fp32.close()
    with pytest.raises(StoreError, match="made by model"):
        Verifier.load(DEFAULT_ONNX_INT8, db=tmp_path / "a.db")


def test_threads_setting():
    assert Verifier.load(backend="onnx", threads=2).backend.threads == 2
    assert Verifier.load(backend="onnx").backend.threads == 1
    with pytest.raises(ConfigError, match="threads"):
        Verifier.load(backend="onnx", threads=0)
    with pytest.raises(ConfigError, match="onnx backend reads .onnx"):
        Verifier.load(DEFAULT_MODEL, backend="onnx")
    with pytest.raises(ConfigError, match="runs on the onnx backend"):
        Verifier.load(DEFAULT_ONNX, backend="torch")


def _foreign(path: Path) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("kind", ["malformed", "truncated", "foreign", "empty"])
def test_bad_onnx_files_give_a_clear_error(tmp_path, kind):
    path = tmp_path / "bad.onnx"
    if kind == "malformed":
        path.write_bytes(b"\x08\x07garbage" * 100)
    elif kind == "truncated":
        path.write_bytes(DEFAULT_ONNX.read_bytes()[: DEFAULT_ONNX.stat().st_size // 2])
    elif kind == "foreign":
        _foreign(path)
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not an ONNX model file exported by lightsv"):
        OnnxModel(path)
    db = tmp_path / "s.db"
    out = run(["-m", "lightsv", "enroll", "--db", str(db), "--model", str(path), "x", str(example_clips()["ls19"][0])])
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "lightsv: error:" in out.stderr, out.stderr


def test_long_lists_are_batched_by_padded_duration():
    from lightsv.verifier import BATCH_SECONDS, _batches

    seconds = [1.0] * 40 + [30.0] * 12 + [BATCH_SECONDS * 2]
    groups = _batches(list(range(len(seconds))), seconds, batch_size=16)
    assert sorted(i for g in groups for i in g) == list(range(len(seconds)))
    assert all(len(g) <= 16 for g in groups)
    assert all(len(g) * max(seconds[i] for i in g) <= BATCH_SECONDS for g in groups if len(g) > 1)
    assert [len(g) for g in groups] == [16, 16, 8, 5, 5, 2, 1]


def test_torch_only_commands_say_so_in_one_line_without_torch(no_torch):
    for args in (["train", "recipes/voxceleb/conf/default.yaml"], ["export", "--out", "x.onnx"], ["profile"]):
        out = run(["-m", "lightsv", *args], no_torch)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "needs torch" in out.stderr, out.stderr


def test_export_without_its_extra_names_the_extra(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(blocker("onnxscript"))
    out = run(["-m", "lightsv", "export", "--out", str(tmp_path / "m.onnx")], tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "lightsv[export]" in out.stderr and "onnxscript" in out.stderr
