"""The offline side: torch, and what only the trainer and its tools need.

Mocap and BVH readers, dataset makers, models, losses, the trainer, export to ONNX / TensorRT,
and the evaluation of engines and checkpoints. It may import engines.runtime.engine.engine; the runtime never
imports it.
"""
