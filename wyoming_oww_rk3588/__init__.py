"""Wyoming wake-word server running openWakeWord's pipeline batched on CPU, OpenCL and the RK3588 NPU."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `python -m wyoming_oww_rk3588 --version` does not load onnxruntime.
    if name in ("Model", "AudioFeatures"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["AudioFeatures", "Model", "__version__"]
