"""A small exception hierarchy; front ends turn these into exit codes or HTTP errors."""


class ThreatQAError(Exception):
    """Base for every error threatqa raises on purpose; its message is shown to the user."""


class ConfigError(ThreatQAError):
    """A setting has a bad value."""


class IngestError(ThreatQAError):
    """A document cannot be read (reported as a warning; the rest is still indexed)."""


class ModelUnavailable(ThreatQAError):
    """The embedding or re-ranking model is neither cached nor reachable."""


class ModelRejected(ThreatQAError):
    """The model's files do not match the expected hash: refused, never replaced by another model."""


class IndexMissing(ThreatQAError):
    """No index has been built yet in the configured folder."""


class IndexMismatch(ThreatQAError):
    """The index on disk does not fit the configured model, or its files are damaged."""


class QuestionError(ThreatQAError):
    """A question cannot be answered as given (wrong type, bad k, unknown documents)."""


class QuestionTooLong(QuestionError):
    """The question is over the length limit (HTTP 413)."""


class AuditError(ThreatQAError):
    """The audit log could not be written or read; the request must fail visibly."""
