"""The pipeline's stages, one file each: capture, detect, lift, smooth, output.

Each module defines one `pipeline.stage.Stage` subclass whose `name` is the module's name;
the runner finds it by that name (see `pipeline.graph.stage_class`).
"""
