"""The exceptions daskrs raises. Errors raised by user code in a task come
back as themselves; these are the cluster's own."""

from __future__ import annotations


class DaskrsError(Exception):
    """Something the daskrs cluster or client refused or could not do."""


class ConnectError(DaskrsError, ConnectionError):
    """No scheduler answered at the address."""


class AuthenticationError(DaskrsError, PermissionError):
    """The cluster refused the client: it needs a token (``token=`` or
    ``$DASKRS_TOKEN``), or the one given is wrong."""


class SchedulerLost(DaskrsError, ConnectionError):
    """The scheduler went away while a call was under way."""


class Rejected(DaskrsError, ValueError):
    """The scheduler refused a graph or SQL before running anything: the
    message names the task, key or part of the statement at fault."""


class NoWorkers(DaskrsError):
    """The work needs workers and none is attached."""


class GatherError(DaskrsError):
    """A result could not be fetched from the cluster."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a worker, as its cause."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class TaskFailed(DaskrsError):
    """A task failed for good on a worker: the message names the task, the
    worker and the task's own error. When user code raised, the client
    raises that exception instead (see :meth:`original`)."""

    def __init__(
        self,
        message: str,
        key: str = "",
        worker: str = "",
        error: str = "",
        lost_outputs: list[str] | None = None,
        exception: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.key = key
        self.worker = worker
        self.error = error
        self.lost_outputs = list(lost_outputs or [])
        self.exception = exception

    def original(self) -> BaseException | None:
        """What user code raised, with the remote traceback as its cause;
        None when the task failed otherwise or the exception cannot be
        rebuilt here."""
        if not self.exception:
            return None
        from daskrs import _serialize

        try:
            exc = _serialize.loads("p", self.exception)
        except Exception:  # noqa: BLE001 - e.g. its class is not importable here
            return None
        if not isinstance(exc, BaseException):
            return None
        # Where tblib's pickling support is on (distributed installs it), the
        # exception arrives with a rebuilt traceback whose frames hang off
        # this thread's: dropped, so that the exception keeps nothing of the
        # client alive. The remote traceback is the cause's text.
        exc.__traceback__ = None
        exc.__context__ = None
        exc.__cause__ = RemoteTraceback(
            f'\n"""\ntask {self.key!r} on worker {self.worker!r}:\n{self.error}\n"""'
        )
        return exc

    def raise_original(self) -> None:
        """Raises what user code raised, or this error when there is none."""
        exc = self.original()
        if exc is None:
            raise self
        raise exc from exc.__cause__


class VersionMismatch(DaskrsError):
    """The client and the cluster run versions that do not work together."""


class UnsupportedDask(DaskrsError, ImportError):
    """The installed dask release is older than daskrs supports."""
