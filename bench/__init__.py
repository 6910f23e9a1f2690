"""Benchmarks: drive the real system from outside and read latency off message stamps.

`python -m bench.latency` (the whole pipeline against its baselines), `bench.lifter`
(the lifter engine and numba kernels), `bench.transport_floor`, `bench.single_process`,
`bench.mediapipe_peer`. See docs/BENCHMARKS.md.
"""
