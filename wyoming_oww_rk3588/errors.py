"""Typed errors; each message is one line that says what is wrong and what to do."""


class ModelError(ValueError):
    """A model name or file cannot be used (unknown name, bad file, checksum mismatch)."""


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says why and what to do."""


class BackendFailed(RuntimeError):
    """A running backend failed; the engine moves its streams to the CPU backend."""
