"""The same bytes under every Python: each interpreter this machine has writes every artifact that needs only
NumPy (tests/programs/write_artifacts.py), in a small venv made once and cached, and the files must equal
this interpreter's, and the lesson's the committed dvc.lock's.

Interpreters: GDPIPE_TEST_PYTHONS (paths, separated by the path separator), or else the operating system's
python3 and every pyenv version; those older than 3.11, which gdpipe does not support, are left out. The test
fails when it finds none but its own: a cross-interpreter check that compares nothing proves nothing.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

from support import REPO, committed_md5

WRITER = REPO / "tests" / "programs" / "write_artifacts.py"
# The writer's imports, at the versions constraints.txt pins: numpy, and what the config, data and stage code need.
WRITER_PACKAGES = ("numpy", "pydantic", "pydantic_core", "ruamel.yaml", "tqdm")
# The oldest NumPy that pyproject.toml admits (numpy>=2.0) is tried with the first interpreter that has wheels for it.
OLDEST_NUMPY = ("numpy==2.0.*", (3, 13))  # the spec, and the first Python without wheels for it


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))
    return {name: f"{name}=={pins[name]}" for name in WRITER_PACKAGES}


def _version(python: Path) -> tuple[int, ...] | None:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:3])"], capture_output=True, text=True, timeout=30
        )
    except OSError:
        return None
    return tuple(map(int, done.stdout.split())) if done.returncode == 0 else None


def interpreters() -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Label -> (path, version) of the supported interpreters found, this test's own excluded."""
    named = os.environ.get("GDPIPE_TEST_PYTHONS")
    if named:
        candidates = [Path(p) for p in named.split(os.pathsep) if p]
    else:
        # The account's own home: conftest gives the tests another HOME.
        pyenv = Path(os.environ.get("PYENV_ROOT") or Path(pwd.getpwuid(os.getuid()).pw_dir) / ".pyenv")
        candidates = [Path("/usr/bin/python3"), *sorted(pyenv.glob("versions/*/bin/python"))]
    found, seen = {}, {Path(sys.executable).resolve()}
    for python in candidates:
        if not python.exists() or python.resolve() in seen:
            continue
        seen.add(python.resolve())
        version = _version(python)
        if version and version >= (3, 11):
            found[f"python{'.'.join(map(str, version))} ({python})"] = (python, version)
    return found


def writer_venv(cache: Path, python: Path, version: tuple[int, ...], numpy: str | None = None) -> Path:
    """A venv of `python` with only the writer's packages (cached by version and spec); its python."""
    packages = _pins() | ({"numpy": numpy} if numpy else {})
    spec = " ".join(packages.values())
    folder = cache / f"{'.'.join(map(str, version))}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    stamp = folder / "gdpipe-spec.txt"
    if not (stamp.exists() and stamp.read_text() == spec):
        subprocess.run([python, "-m", "venv", "--clear", folder], check=True, capture_output=True)
        install = [folder / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        done = subprocess.run([*install, *packages.values()], capture_output=True, text=True)
        assert done.returncode == 0, f"pip could not install {spec} for {python}:\n{done.stderr[-2000:]}"
        stamp.write_text(spec)
    return folder / "bin" / "python"


def written(python: Path, out: Path) -> dict[str, bytes]:
    """Relative path -> bytes of everything the writer wrote under `out` with `python`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GDPIPE_"))}
    done = subprocess.run([python, WRITER, out], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{python} could not write the artifacts:\n{done.stderr[-2000:]}"
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


def test_every_interpreter_writes_the_same_bytes(tmp_path, request):
    found = interpreters()
    assert found, (
        "no other Python 3.11+ found (the operating system's python3, pyenv's versions): "
        "install one or name some in GDPIPE_TEST_PYTHONS"
    )
    cache = request.config.cache.mkdir("writer-venvs")
    own = written(Path(sys.executable), tmp_path / "own")
    assert len(own) == 8, sorted(own)  # 2 cases x data set, history, model, metrics
    for name in ("data/dataset.npy", "history/numpy.csv", "models/numpy.json"):
        assert hashlib.md5(own[f"lesson/{name}"]).hexdigest() == committed_md5(name), f"{name}: not dvc.lock's bytes"
    runs = {label: (python, version, None) for label, (python, version) in found.items()}
    oldest_spec, no_wheels_from = OLDEST_NUMPY
    older = [(label, p, v) for label, (p, v) in found.items() if v < no_wheels_from]
    if older:
        label, python, version = older[0]
        runs[f"{label} with {oldest_spec}"] = (python, version, oldest_spec)
    differences = []
    for label, (python, version, numpy) in runs.items():
        theirs = written(writer_venv(cache, python, version, numpy), tmp_path / re.sub(r"\W+", "-", label))
        assert sorted(theirs) == sorted(own), label
        differences += [f"{label}: {name}" for name in own if theirs[name] != own[name]]
    assert not differences, "other bytes than this interpreter's:\n" + "\n".join(differences)
    print(f"same bytes under {sys.version.split()[0]} and", ", ".join(runs))


def test_named_interpreters_replace_the_search(monkeypatch):
    # This test's own interpreter and one that is not there are not counted: nothing is left to compare.
    monkeypatch.setenv("GDPIPE_TEST_PYTHONS", os.pathsep.join([sys.executable, "/nowhere/python"]))
    assert interpreters() == {}
