"""The errors of ``models``: bad names, kwargs or weights files. The message names the problem and the fix."""

__all__ = ["ModelError", "WeightsError"]


class ModelError(ValueError):
    """An unknown model name or kwargs a model rejects; the message names the problem and the fix."""


class WeightsError(ModelError):
    """A weights file that cannot be read, cannot be fetched or does not fit the model; the message says which."""
