"""Sparse for real: a compact file and ONNX of a finished run (export), and sparse CPU kernels where they pay (inference)."""
