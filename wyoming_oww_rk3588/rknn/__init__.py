"""RKNN heads for the RK3588 NPU: conversion (rknn-toolkit2, in its own venv) and the file cache.

Nothing here imports rknn-toolkit2: `worker.py` runs inside the toolkit's interpreter.
"""
