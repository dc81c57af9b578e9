"""The errors a person running kpiguard can fix, in one hierarchy.

Every one of them reaches the user as one paragraph and exit code 2 (``pipeline.cli``), never a
traceback: it names what failed (a file, a column, a server, a key) and the rule it broke, so the
message says what to change. Anything else that escapes is a bug in kpiguard.

- :class:`KpiguardError`: the base; ``source``, ``rule``, ``detail`` (and ``column``).
- :class:`DataError`: bad input data or a bad path (the contract, validation, sources, storage).
- :class:`ParamsError`: params.yaml or a ``-S`` override.
- :class:`ThreadsError`: a thread-count environment variable.
- :class:`TrackingError`: the MLflow tracking server, or a registered model kpiguard refuses to use.
- :class:`RegistryError`: a registry operation that cannot be done as asked.
- :class:`OutputError`: an output cannot be written (a full disk, no permission, a file where a
  directory must be); the previous output is unchanged.
- :class:`AlertError`: an alert sink (Alertmanager, a webhook) or the alert ledger cannot be used;
  what was delivered is recorded, and the next run resends the rest.
"""
from __future__ import annotations


class KpiguardError(ValueError):
    """An error the user can fix: ``source`` (what), ``rule`` (which expectation failed), ``detail``."""

    def __init__(self, source: str, rule: str | None, detail: str, column: str | None = None):
        self.source, self.rule, self.detail, self.column = source, rule, detail, column
        where = f"column '{column}' of " if column else ""
        super().__init__(f"{where}{source}: rule '{rule}' failed: {detail}" if rule else f"{source}: {detail}")


class DataError(KpiguardError):
    """Bad input, reported so a person can fix it: which source, which column, which rule."""


class _MessageError(KpiguardError):
    """An error whose text is one message (no source/rule split)."""

    def __init__(self, message: str):
        self.source, self.rule, self.detail, self.column = None, None, message, None
        ValueError.__init__(self, message)


class ParamsError(_MessageError):
    """params.yaml (or an override) is invalid."""


class ThreadsError(_MessageError):
    """A thread-count environment variable is not a positive integer."""


class TrackingError(KpiguardError):
    """The tracking server cannot be used, or a registered model is refused: names the URI and what failed."""

    def __init__(self, uri: str, detail: str, rule: str = "tracking_server_reachable"):
        super().__init__(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI)", rule, detail)


class RegistryError(KpiguardError):
    """A registry operation that cannot be done as asked (no champion, unknown version, ...)."""

    def __init__(self, model: str, rule: str, detail: str):
        super().__init__(f"registered model '{model}'", rule, detail)


class OutputError(KpiguardError):
    """An output that cannot be written: names the path and the system's reason; nothing was replaced."""

    def __init__(self, path, detail: str, rule: str = "output_writable"):
        super().__init__(f"output {path}", rule, detail)


class AlertError(KpiguardError):
    """An alert sink or the alert ledger that cannot be used: names the sink and its URL, the HTTP status
    and body (or the connection error), and that the ledger resends what was not delivered next run."""

    def __init__(self, source: str, rule: str, detail: str, summary: dict | None = None):
        super().__init__(source, rule, detail)
        self.summary = summary  # what the push did deliver (pipeline.batch.alerts.push), for callers that log it


def output_error(target, exc: OSError) -> OutputError:
    """The :class:`OutputError` for an ``OSError`` raised while ``target`` was being written."""
    reason = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(target) else ""
    return OutputError(target, f"{reason}{where}; the previous output at this path is unchanged "
                               "(free space or fix the permissions, then rerun: reruns are idempotent)")


class ReviewError(KpiguardError):
    """A review that cannot be stored as given (an unknown incident, a malformed range, a verdict not in
    the list), or a review store that cannot be used: names the store or the incident and the rule."""
