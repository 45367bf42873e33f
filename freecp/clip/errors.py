"""Errors of the CLIP layer that callers catch without loading torch (the CLI's error handling)."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (typically: no network and no local file)."""
