"""The errors promptkit raises: one root, a few kinds, each message names the thing and the fix."""

from __future__ import annotations


class PromptkitError(Exception):
    """Root of every error promptkit raises on purpose."""


class ConfigError(PromptkitError, ValueError):
    """A setting is missing, out of range, or of the wrong kind."""


class DataError(PromptkitError, ValueError):
    """Input data is malformed: a bad row, a missing field, an unknown label."""


class TemplateError(PromptkitError):
    """A template cannot be parsed, checked or rendered (including sandbox violations)."""


class NotFittedError(PromptkitError):
    """An adapter that must be trained was used before `fit`."""


class ArtifactError(PromptkitError):
    """A saved artifact is missing, corrupted, or written by an incompatible version."""


class UnknownNameError(PromptkitError, KeyError):
    """A registry lookup failed; the message lists close matches and every known name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ModelNotAvailableError(PromptkitError):
    """A model alias, id or path cannot be resolved (for example, offline and not cached)."""


class KnowledgeBaseError(PromptkitError):
    """A knowledge base cannot be built, loaded or queried as asked."""
