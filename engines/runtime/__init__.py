"""The torch-free runtime: what every pipeline process may import.

Skeleton, camera math, intrinsics, the 2D/3D codec, the numba reprojection kernels and the engine
loader (ONNX Runtime, TensorRT). Nothing here imports torch, nor anything from engines.training;
tests/test_layout.py keeps that wall standing.
"""
