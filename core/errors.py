"""The one error hierarchy of refitd.

Every error builds its own message, so callers raise with facts and the text
reads the same wherever it is shown (CLI, HTTP, event rows). Every class carries
what it becomes at each door: ``status_code`` for the HTTP layer (one handler maps
it), ``exit_code`` for the CLI (which prints the message alone, one line, and
exits with it). An expected refusal is one of these; anything else is a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


def validation_problems(exc: ValidationError, *, subject: str) -> str:
    """A pydantic validation error as one line, ``where: what`` per problem (``subject`` when it is the whole)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or subject}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


class RefitdError(Exception):
    """Base of every error refitd raises on purpose."""

    #: HTTP status the API layer maps this error to.
    status_code: int = 500
    #: Exit status of a CLI command that ends with this error.
    exit_code: int = 2


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


class ChampionChangedError(RegistryError):
    """The champion is no longer the one a decision was made against (a rollback or another promotion
    landed meanwhile): acting on the decision now would replace a version it never compared with."""

    def __init__(self, expected: str, current: str | None, action: str) -> None:
        self.expected, self.current = expected, current
        super().__init__(f"not {action}: the champion is now {current or 'none'}, not {expected} "
                         f"as when the decision was made")


class LeaseTakenError(RefitdError):
    """Someone else holds a lease (e.g. a refit is already running, started by the daemon or by hand)."""

    status_code = 409
    exit_code = 75  # EX_TEMPFAIL: try again later

    def __init__(self, name: str, holder: str | None, until: str | None) -> None:
        self.name, self.holder = name, holder
        held = f"held by {holder}" + (f" until {until} UTC unless renewed" if until else "")
        super().__init__(f"the {name} lease is {held}: a {name} is already running; try again once it has finished")


class RefitStillRunningError(RefitdError):
    """A refit recorded as running still runs on this host, with nobody holding its lease."""

    status_code = 409
    exit_code = 75  # EX_TEMPFAIL: try again later


class NoChampionError(RegistryError):
    """Nothing has been promoted yet."""

    status_code = 503

    def __init__(self) -> None:
        RefitdError.__init__(self, "no champion model: run `refitd init` to train and promote v1")


class ArtifactError(RefitdError):
    """A model version's files are missing or unusable."""

    status_code = 500

    def __init__(self, version: str, problem: str) -> None:
        self.version, self.problem = version, problem
        super().__init__(f"artifact for {version}: {problem}")


class ModelLoadError(RefitdError):
    """A model version could not be loaded into a runtime or failed its smoke query."""

    status_code = 503

    def __init__(self, version: str, reason: str) -> None:
        self.version, self.reason = version, reason
        super().__init__(f"cannot load model {version}: {reason}")


class BadRequestError(RefitdError):
    """A request that cannot be served as sent (malformed syntax); says what is wrong."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)


class UnprocessableError(BadRequestError):
    """A well-formed request whose content cannot be used (an unknown label, an empty text)."""

    status_code = 422


class PayloadTooLargeError(BadRequestError):
    """A request over a configured size limit."""

    status_code = 413


class AdminDeniedError(RefitdError):
    """An admin route called without the right token, or with admin routes switched off."""

    def __init__(self, message: str, *, disabled: bool) -> None:
        # 404 when switched off: the route does not exist for this deployment.
        self.status_code = 404 if disabled else 401
        self.challenge = None if disabled else "Bearer"  # a 401 names its scheme (RFC 9110 §15.5.2)
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


class TrainingError(RefitdError):
    """A training run that cannot give a usable model, for a reason a person can act on."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)


class ParityError(TrainingError):
    """The exported graph does not compute what the torch model computes."""

    def __init__(self, max_diff: float, tolerance: float, n_texts: int) -> None:
        self.max_diff, self.tolerance = max_diff, tolerance
        super().__init__(f"ONNX export differs from the torch model: max |Δlogit| = {max_diff:.2e} > tolerance "
                         f"{tolerance:.0e} on {n_texts} texts")


class SearchError(TrainingError):
    """A hyper-parameter search that finished no trial."""

    def __init__(self, budget_minutes: float) -> None:
        super().__init__(f"hyperparameter search finished no trial in {budget_minutes} min; "
                         "raise hpo.budget_minutes")


class DemoError(RefitdError):
    """A step of `refitd demo` that could not go on; names the log to read."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(f"demo failed: {message}")
