"""Triton kernels of prism_fast (installed as `prism_fast.kernels`).

A leaf package: imports torch and triton only, never prism_fast. Public entry points are the launchers in each
module; `prism_fast.ops` is the only caller. Importing this package does not import triton: each kernel module
does, so a machine without triton can still use the pure-PyTorch backends.
"""
