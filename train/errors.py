"""The trainer's own error: what stops a run with a message, not a traceback."""

__all__ = ["TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, missing or mismatched stage-1 checkpoint)."""
