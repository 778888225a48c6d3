"""The error types lightsv raises for bad input; each message names the source and the problem."""


class LightsvError(Exception):
    """Base of every error lightsv raises on purpose (the CLI turns these into one-line messages)."""


class AudioError(LightsvError, ValueError):
    """Audio that cannot be used: missing, unreadable, empty, too short or long, or non-finite."""


class ConfigError(LightsvError, ValueError):
    """A model or recipe configuration that is malformed or names something unknown."""


class CheckpointError(LightsvError, ValueError):
    """A file that is not a lightsv checkpoint, or whose config and weights disagree."""


class ScoresError(LightsvError, ValueError):
    """Scores and labels that cannot be evaluated (empty class, mismatched lengths, non-finite)."""


class StoreError(LightsvError):
    """An enrollment database that cannot be used: empty or corrupt file, locked, or made by another model."""


class UnknownSpeakerError(LightsvError, LookupError):
    """A speaker name that is not enrolled."""


class ThresholdError(LightsvError, ValueError):
    """A decision asked for where there is no threshold for the scores (uncalibrated model, or a cohort
    set on a model calibrated for raw cosines)."""
