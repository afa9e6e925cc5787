"""RKNN heads for the RK3588 NPU: conversion with rknn-toolkit2 (in its own venv) and the .rknn cache.
Nothing here imports rknn-toolkit2: `worker.py` runs inside the toolkit's own interpreter."""
