"""The one error hierarchy of refitd.

Every error builds its own message, so callers raise with facts and the text
reads the same wherever it is shown (CLI, HTTP, event rows).
"""

from __future__ import annotations


class RefitdError(Exception):
    """Base of every error refitd raises on purpose."""

    #: HTTP status the API layer maps this error to.
    status_code: int = 500


class ConfigError(RefitdError):
    """Settings that cannot be used as given."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(f"configuration error: {message}")


class DataError(RefitdError):
    """A data file or row that cannot be used; names the file, row and column."""

    status_code = 422

    def __init__(
        self,
        problem: str,
        *,
        path: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.problem, self.path, self.row, self.column = problem, path, row, column
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class NotFoundError(RefitdError):
    """A named thing (model version, prediction, drift check) does not exist."""

    status_code = 404

    def __init__(self, kind: str, key: object) -> None:
        self.kind, self.key = kind, key
        super().__init__(f"{kind} {key!r} not found")


class RegistryError(RefitdError):
    """A registry operation that the current state does not allow."""

    status_code = 409

    def __init__(self, message: str) -> None:
        super().__init__(message)


class NoChampionError(RegistryError):
    """Nothing has been promoted yet."""

    status_code = 503

    def __init__(self) -> None:
        RefitdError.__init__(self, "no champion model: run `refitd init` to train and promote v1")


class ArtifactError(RefitdError):
    """A model version's files are missing or unusable."""

    status_code = 500

    def __init__(self, version: str, problem: str) -> None:
        self.version = version
        super().__init__(f"artifact for {version}: {problem}")


class ModelLoadError(RefitdError):
    """A model version could not be loaded into a runtime or failed its smoke query."""

    status_code = 503

    def __init__(self, version: str, reason: str) -> None:
        self.version, self.reason = version, reason
        super().__init__(f"cannot load model {version}: {reason}")


class BadRequestError(RefitdError):
    """A request that cannot be served as sent; says what is wrong."""

    status_code = 400

    def __init__(self, message: str, status_code: int = 400) -> None:
        self.status_code = status_code
        super().__init__(message)


class OverloadedError(RefitdError):
    """The server is at capacity; the caller should retry later."""

    status_code = 503

    def __init__(self, message: str = "server is at capacity; retry later", retry_after: int = 1) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class NotReadyError(RefitdError):
    """The server has no model loaded yet."""

    status_code = 503

    def __init__(self, message: str = "no model is loaded yet") -> None:
        super().__init__(message)
