"""Quiet the libraries' noise at its source, so a run's log shows our own lines.

`quiet_third_party()` is called first thing in every stage process (pipeline/runner.py) and by
the tools that load mediapipe themselves. It installs warnings filters for the deprecation
notices that mediapipe's Python side triggers in protobuf on every run (they are about
mediapipe's code, not ours, and a user can do nothing about them); our own warnings and log
lines are untouched.

What it cannot quiet: mediapipe 0.10.14's native code writes a few lines straight to the
process's stderr when a BlazePose graph starts ("INFO: Created TensorFlow Lite XNNPACK delegate
for CPU.", absl's "WARNING: All log messages before absl::InitializeLog() ..." and two
"W0000 ... inference_feedback_manager.cc:114] Feedback manager requires a model with a single
signature inference" lines). Those come from absl's C++ logging and TFLite's minimal logger,
which read no environment variable in this wheel (GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL and
ABSL_MIN_LOG_LEVEL were tried: no effect) and whose level setters the Python bindings do not
expose. They are harmless and appear once per detection process start.
"""

from __future__ import annotations

import warnings

#: (message regex, category, module regex) of each warning filtered out; a message regex
#: matches the start of the warning's text.
THIRD_PARTY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # mediapipe's solution_base calls SymbolDatabase.GetPrototype() (protobuf 4.x deprecates it)
    (r"SymbolDatabase\.GetPrototype\(\) is deprecated", UserWarning, r"google\.protobuf"),
)


def quiet_third_party() -> None:
    """Install the warnings filters of `THIRD_PARTY_WARNINGS` (idempotent)."""
    for message, category, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
