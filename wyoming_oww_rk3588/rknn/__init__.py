"""RKNN heads for the RK3588 NPU: conversion with rknn-toolkit2 (in its own venv), the .rknn cache, the
shipped sets per runtime release (builtin.py) and what the board's runtime is (board.py).
Nothing here imports rknn-toolkit2: `worker.py` runs inside the toolkit's own interpreter."""
