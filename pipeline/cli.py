"""The `posestream` command: one installed entry point, a subcommand per tool.

    posestream run --camera 0                   # the live pipeline (= python run_pipeline.py)
    posestream subscribe --latest               # = python -m pipeline.subscribe --latest
    posestream COMMAND --help                   # that tool's own flags
    posestream --help                           # every command, one line each

Each subcommand is the `main(argv)` of one module, imported only when that command runs: the
table below names modules as strings, so `posestream --help` starts in a fraction of a second
and loads neither mediapipe nor torch, and this module (a pipeline module, see
tests/test_layout.py) never imports the trainer; only `posestream train`, `evaluate`,
`export-engine` and `make-eval-poses` load engines.training (and so torch), in their own
process. A command's `--help` shows its `python -m` form, which works the same.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One subcommand: the module whose `main(argv, prog=) -> int` it runs (prog: the name
    its --help shows), and a one-line summary."""

    name: str
    module: str
    summary: str


#: Every subcommand, in the order `posestream --help` lists them; (title, commands) groups.
GROUPS: tuple[tuple[str, tuple[Command, ...]], ...] = (
    ("the pipeline", (
        Command("run", "run_pipeline",
                "stream 3D poses from a camera, video or image set (as run_pipeline.py)"),
    )),
    ("around the stream", (
        Command("subscribe", "pipeline.subscribe", "print the published poses, one line each"),
        Command("view", "pipeline.view",
                "live viewer: 2D skeleton on the frame, orbiting 3D skeleton, fps, latency"),
        Command("record", "pipeline.record", "record the stream to a .psrec file"),
        Command("replay", "pipeline.replay", "publish a .psrec recording again, with its timing"),
        Command("export", "pipeline.export",
                "convert a .psrec recording to jsonl, csv, npz or BVH (Blender)"),
        Command("rerun", "pipeline.rerun",
                "show the stream in the Rerun viewer or save it as .rrd (pip extra [rerun])"),
        Command("keys", "pipeline.keys", "make and authorise CurveZMQ keys for the stream"),
        Command("calibrate", "pipeline.calibrate",
                "chessboard camera calibration; writes the file --calib reads"),
    )),
    ("the lifter (offline; loads torch)", (
        Command("train", "engines.training.train",
                "train a 2D-to-3D lifter from motion capture (chen2019, li2020, supervised)"),
        Command("evaluate", "engines.training.evaluate",
                "score an engine or checkpoint on held-out 3D poses (MPJPE, PA-MPJPE)"),
        Command("export-engine", "engines.training.export",
                "export a checkpoint to the engine file the runtime loads (ONNX, TensorRT)"),
        Command("make-eval-poses", "engines.training.make_eval_poses",
                "write an evaluation pose file for `posestream evaluate`"),
    )),
)

COMMANDS: dict[str, Command] = {c.name: c for _, group in GROUPS for c in group}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("posestream")
    except PackageNotFoundError:
        return "(not installed; running from a checkout)"


def usage() -> str:
    """The text of `posestream --help`."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: posestream COMMAND [ARGS...]",
        "",
        "Real-time monocular 3D human pose: one camera in, metric 3D skeletons out over "
        "ZeroMQ.",
        "`posestream COMMAND --help` gives a command's flags.",
    ]
    for title, group in GROUPS:
        lines += ["", f"{title}:"]
        lines += [f"  {c.name:<{width}}  {c.summary}" for c in group]
    lines += [
        "",
        "options:",
        "  -h, --help     show this message and exit",
        "  --version      show the installed version and exit",
        "",
        "examples:",
        "  posestream run --camera 0 --view",
        "  posestream run --video clip.mp4 --record clip.psrec",
        "  posestream export clip.psrec --format bvh -o clip.bvh",
        "  posestream rerun --save clip.rrd",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Dispatch `posestream COMMAND ARGS...` to COMMAND's module. Returns its exit status
    (2 for an unknown command, as argparse does for a bad flag)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        if len(args) >= 2 and args[0] == "help" and args[1] in COMMANDS:
            return main([args[1], "--help"])
        (sys.stdout if args else sys.stderr).write(usage())
        return 0 if args else 2
    if args[0] == "--version":
        sys.stdout.write(f"posestream {_version()}\n")
        return 0
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        close = [c for c in COMMANDS if c.startswith(name)] if name else []
        close = close if len(close) == 1 else difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        sys.stderr.write(f"posestream: unknown command {name!r}{hint}; "
                         f"commands: {', '.join(COMMANDS)}. See posestream --help.\n")
        return 2
    module = importlib.import_module(command.module)
    code = module.main(rest, prog=f"posestream {name}")
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
