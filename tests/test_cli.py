"""The `posestream` command: every subcommand resolves to a real tool, and a plain (not
editable) `pip install .` gives a working command, shipped engine included, from any folder."""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import REPO, free_port

VIDEO = "data/footage/openpose/examples/media/video.avi"  # 1280x720, 205 frames


def _cli(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_help_lists_every_command_with_a_line_each():
    from pipeline.cli import COMMANDS

    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines()
              if line.startswith("  ") and not line.strip().startswith(("-", "posestream"))]
    assert listed == list(COMMANDS)
    assert {"run", "subscribe", "view", "record", "replay", "export", "keys", "calibrate",
            "rerun", "train", "evaluate", "export-engine", "make-eval-poses"} <= set(COMMANDS)


def test_every_command_names_a_module_with_main():
    """Found without importing (the lifter commands would load torch): the file defines
    main, and main takes the prog its --help shows."""
    from pipeline.cli import COMMANDS

    for command in COMMANDS.values():
        spec = importlib.util.find_spec(command.module)
        assert spec is not None and spec.origin, command
        tree = ast.parse(Path(spec.origin).read_text())
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert mains, f"{command.module} has no main()"
        assert "prog" in [a.arg for a in mains[0].args.args + mains[0].args.kwonlyargs], command


def test_subcommand_help_is_the_tools_own():
    result = _cli("run", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: posestream run")
    assert "--video FILE" in result.stdout
    result = _cli("export", "--help")
    assert result.returncode == 0 and "--format" in result.stdout
    assert result.stdout.startswith("usage: posestream export"), result.stdout[:80]


def test_unknown_command_exits_2_with_a_hint():
    result = _cli("subscrib")
    assert result.returncode == 2
    assert "did you mean 'subscribe'" in result.stderr
    assert _cli().returncode == 2  # no command: the usage on stderr


def test_help_loads_neither_mediapipe_nor_torch():
    code = ("import sys, pipeline.cli as c; c.main(['--help']); "
            "print(sorted(m for m in ('torch', 'mediapipe', 'cv2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip().endswith("[]"), result.stdout + result.stderr


def _copy_source(dst: Path) -> Path:
    """The repository's source without build outputs, venvs or git (what a user downloads)."""
    ignore = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "build",
                                    "dist", ".pytest_cache", "runs", ".hypothesis")
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def test_pip_install_gives_a_working_command(tmp_path, shared_file):
    """`pip install .` (not editable) into a fresh venv, then `posestream --help` and a 5-frame
    run of the street video from another folder. The heavy dependencies are not downloaded
    again: the new venv sees this interpreter's site-packages through a .pth line (whose own
    .pth files, e.g. an editable install of this checkout, are not run), and pip builds with
    --no-build-isolation --no-deps --no-index."""
    video = shared_file(VIDEO)
    src = _copy_source(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "_shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
         "--no-build-isolation", "--no-index", str(src)],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    shutil.rmtree(src)  # nothing may still point into the source tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import pipeline, engines.runtime.engine as e; "
                            "print(pipeline.__file__); print(e.DEFAULT_ENGINE_PATH.is_file()); "
                            "print(e.resolve_engine_path('temporal').is_file())"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, timeout=60)
    assert where.stdout.splitlines() == [str(site / "pipeline" / "__init__.py"), "True", "True"], (
        where.stdout + where.stderr)

    command = venv / "bin" / "posestream"
    helped = subprocess.run([str(command), "--help"], capture_output=True, text=True,
                            cwd=elsewhere, env=env, timeout=60)
    assert helped.returncode == 0 and "make-eval-poses" in helped.stdout, helped.stderr
    run = subprocess.run(
        [str(command), "run", "--video", str(video), "--max-frames", "5", "--every-frame",
         "--as-fast-as-possible", "--publish", f"tcp://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, cwd=elsewhere, env=env, timeout=180)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "published 5 poses" in run.stderr, run.stderr[-4000:]
    assert "GetPrototype" not in run.stderr  # mediapipe's protobuf noise (pipeline/quiet.py)
    assert f"lifter engine {site / 'engines' / 'default' / 'lifter.onnx'}" in run.stderr


def test_rerun_without_rerun_sdk_says_how_to_install(tmp_path):
    """rerun-sdk is optional: without it, `posestream rerun` exits 2 with the install command."""
    code = ("import sys; sys.modules['rerun'] = None  # as if rerun-sdk were not installed\n"
            "from pipeline.cli import main; sys.exit(main(['rerun', '--save', 'x.rrd']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert 'pip install -e ".[rerun]"' in result.stderr
    assert not (tmp_path / "x.rrd").exists()
