"""Install optional extras into the current interpreter: ``python -m lightsv.extras speechbrain teacher``.

torch is never replaced: pip runs with ``-c`` pinning the torch already installed (plus the repo's
constraints.txt when run from a checkout). torchaudio on the registry is a CUDA build whose compiled
``torchaudio/lib/*.so`` fail to load on a CPU-only machine; when ``import torchaudio`` fails, those
files are removed (torchaudio then runs on its pure-Python parts, which is all speechbrain's
ECAPA-TDNN needs). resemblyzer (the distillation teacher and benchmark peer) declares `webrtcvad`,
which does not build here, so it is installed without dependencies and `webrtcvad-wheels` (the same
module, prebuilt) goes beside it. ``wespeaker`` installs pyannote.audio without dependencies (its own
pull in lightning and a dozen more): only its port of WeSpeaker's ResNet
(``pyannote/audio/models/embedding/wespeaker/resnet.py``, which needs torch and einops) is used, loaded
by :func:`wespeaker_resnet` without running pyannote's package imports; the WeSpeaker parity tests run
it against lightsv's importer. ``3dspeaker`` installs speakerlab (3D-Speaker's code) without its
dependencies (funasr, modelscope, datasets, ...): its model and front-end modules need only torch and
torchaudio. Running it again is a no-op that still verifies. Exit code 2 on failure.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# One pip install per inner list (pip options first); mirrors [project.optional-dependencies].
EXTRAS: dict[str, list[list[str]]] = {
    "speechbrain": [["speechbrain>=1.0", "torchaudio"]],
    "teacher": [["--no-deps", "resemblyzer==0.1.4"], ["librosa", "webrtcvad-wheels"]],
    "wespeaker": [["--no-deps", "pyannote.audio==3.3.2"], ["einops", "torchaudio"]],
    "3dspeaker": [["--no-deps", "speakerlab==0.0.6"], ["torchaudio"]],
}
# Code run in a fresh interpreter to prove the extra works.
CHECKS: dict[str, str] = {
    "speechbrain": "import speechbrain\nfrom speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN\n"
    "import torch, torchaudio\nprint(f'torch {torch.__version__}, torchaudio {torchaudio.__version__}, "
    "speechbrain {speechbrain.__version__}')",
    "teacher": "from resemblyzer import VoiceEncoder\nVoiceEncoder('cpu', verbose=False)\nprint('resemblyzer loads')",
    "wespeaker": "import torchaudio.compliance.kaldi\nfrom lightsv.extras import wespeaker_resnet\n"
    "m = wespeaker_resnet().ResNet34(feat_dim=80, embed_dim=256, two_emb_layer=False)\n"
    "print(f'pyannote.audio WeSpeaker ResNet34: {sum(p.numel() for p in m.parameters())} parameters')",
    "3dspeaker": "from speakerlab.models.ecapa_tdnn.ECAPA_TDNN import ECAPA_TDNN\n"
    "from speakerlab.process.processor import FBank\n"
    "m = ECAPA_TDNN(input_size=80, lin_neurons=192, channels=[1024, 1024, 1024, 1024, 3072])\n"
    "print(f'speakerlab ECAPA-TDNN: {sum(p.numel() for p in m.parameters())} parameters')",
}


def wespeaker_resnet():
    """pyannote.audio's port of WeSpeaker's ResNet module (``...embedding.wespeaker.resnet``), loaded
    from its files with the two pyannote modules it imports, never running pyannote's package
    ``__init__`` (which needs lightning and the rest of pyannote's stack)."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("pyannote")
    roots = list(spec.submodule_search_locations or []) if spec else []
    root = next(
        (Path(r) / "audio" for r in roots if (Path(r) / "audio/models/embedding/wespeaker/resnet.py").is_file()), None
    )
    if root is None:
        raise ImportError("pyannote.audio is not installed: python -m lightsv.extras wespeaker")
    parts = {
        "pyannote.audio.models.blocks.pooling": root / "models/blocks/pooling.py",
        "pyannote.audio.utils.receptive_field": root / "utils/receptive_field.py",
        "pyannote.audio.models.embedding.wespeaker.resnet": root / "models/embedding/wespeaker/resnet.py",
    }
    module: types.ModuleType | None = None
    for name, path in parts.items():
        if name in sys.modules:
            module = sys.modules[name]
            continue
        file_spec = importlib.util.spec_from_file_location(name, path)
        assert file_spec is not None and file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = module
        file_spec.loader.exec_module(module)
    assert module is not None
    return module


class ExtrasError(Exception):
    """A step failed; the message is one line."""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def _constraint_files(tmpdir: Path) -> list[Path]:
    """The installed torch, pinned exactly, plus constraints.txt of the repo checkout if present."""
    try:
        torch_version = md.version("torch")
    except md.PackageNotFoundError:
        raise ExtrasError("torch is not installed in this interpreter; install lightsv first") from None
    pin = tmpdir / "torch-pin.txt"
    pin.write_text(f"torch=={torch_version}\n")
    files = [pin]
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "constraints.txt").is_file():
        files.append(root / "constraints.txt")
    return files


def _satisfied(requirements: list[str]) -> bool:
    """True when every requirement is installed at an acceptable version."""
    wanted = [r for r in requirements if not r.startswith("-")]
    try:
        from packaging.requirements import Requirement
    except ImportError:  # name-only check; pip itself is the fallback judge
        return all(_version(re.split(r"[^A-Za-z0-9._-]", r, maxsplit=1)[0]) for r in wanted)
    for req in map(Requirement, wanted):
        version = _version(req.name)
        if version is None or not req.specifier.contains(version, prereleases=True):
            return False
    return True


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _pip_install(requirements: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "install"]
        for f in _constraint_files(Path(tmp)):
            cmd += ["-c", str(f)]
        cmd += requirements
        print("running:", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExtrasError(f"pip install failed (exit {proc.returncode}): {_last_line(proc.stderr or proc.stdout)}")
    for line in proc.stdout.splitlines():
        if line.startswith("Successfully installed"):
            print(line)


def _make_torchaudio_importable() -> None:
    """Remove torchaudio's compiled libraries when they stop ``import torchaudio`` (CUDA build on CPU)."""
    proc = _run_python("import torchaudio")
    if proc.returncode == 0:
        return
    spec = importlib.util.find_spec("torchaudio")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ExtrasError(f"torchaudio is not installed: {_last_line(proc.stderr)}")
    lib_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    libs = sorted(lib_dir.glob("*.so"))
    if not libs:
        raise ExtrasError(f"import torchaudio fails and {lib_dir} holds no .so to remove: {_last_line(proc.stderr)}")
    print(f"import torchaudio failed ({_last_line(proc.stderr)}); removing its compiled libraries:")
    for lib in libs:
        lib.unlink()
        print(f"  removed {lib}")
    proc = _run_python("import torchaudio")
    if proc.returncode != 0:
        raise ExtrasError(f"import torchaudio still fails: {_last_line(proc.stderr)}")


def install(extra: str) -> None:
    if extra not in EXTRAS:
        raise ExtrasError(f"unknown extra {extra!r}; known: {', '.join(sorted(EXTRAS))}")
    for requirements in EXTRAS[extra]:
        if _satisfied(requirements):
            print(f"{extra}: already installed ({' '.join(requirements)})")
        else:
            _pip_install(requirements)
    proc = _run_python(CHECKS[extra])
    if proc.returncode != 0 and extra in ("speechbrain", "wespeaker", "3dspeaker"):
        _make_torchaudio_importable()
        proc = _run_python(CHECKS[extra])
    if proc.returncode != 0:
        raise ExtrasError(f"{extra} installed but does not import: {_last_line(proc.stderr)}")
    print(f"{extra}: ok ({_last_line(proc.stdout)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightsv.extras", description=__doc__.splitlines()[0])
    parser.add_argument(
        "extras",
        nargs="+",
        choices=sorted(EXTRAS),
        metavar="EXTRA",
        help=f"optional extras to install ({', '.join(sorted(EXTRAS))})",
    )
    args = parser.parse_args(argv)
    try:
        for extra in args.extras:
            install(extra)
    except ExtrasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
