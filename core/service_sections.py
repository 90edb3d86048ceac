"""The sections of refitd's settings for the running service: serving, drift, the scheduler, Prefect,
the database and object storage (``core/sections.py`` holds the model and how it is refit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from refitd.core.credentials import redact_url
from refitd.core.sections import Section


#: serving.spin: how ONNX Runtime's intra-op workers wait (see the field; ort_spin_entries maps each to session config).
SpinMode = Literal["off", "run", "on"]
SPIN_MODES: tuple[str, ...] = get_args(SpinMode)


class ServingSection(Section):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, description="Port the HTTP server listens on.")
    provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="ONNX Runtime device: auto = CUDA when onnxruntime-gpu sees a GPU, else CPU."
    )
    threads: int | None = Field(None, description="ONNX Runtime intra-op threads; unset = all cores.")
    opentelemetry: bool = Field(
        False, description="FastAPI's OpenTelemetry spans, metrics and logs per request, sent to the providers the "
        "process configures (e.g. under opentelemetry-instrument). Off: the check for a provider is skipped on every "
        "request; /metrics (Prometheus) is there either way."
    )
    spin: SpinMode = Field(
        "run", description="ONNX Runtime's intra-op workers: run = spin while a model call runs, sleep after it "
        "(each operator's hand-off to a sleeping worker is a wake-up; with INT8's many small operators that was "
        "1.3 ms of a 4.6 ms call on 2 threads), no CPU burnt between requests; off = never spin; on = ONNX "
        "Runtime's own default, spinning between calls too (a core burnt while idle, a core a refit or a drift "
        "check then lacks). true / false read as on / off."
    )
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="Which export to serve: auto = the gate's verdict (INT8 if it kept accuracy), or force one."
    )
    max_batch_size: int = Field(32, description="Most texts the batcher runs in one session call.")
    max_wait_ms: float = Field(5.0, description="Longest a request waits for others to fill a batch.")
    max_padding: float = Field(
        0.25, description="Most padding a batch may carry, as a share of its texts' own length: waiting texts are "
        "sorted by length and a batch closes before its padding passes this. 0 = only equal lengths share a batch."
    )
    queue_size: int = Field(1024, description="Most texts waiting; beyond it requests get 503.")
    request_timeout_s: float = Field(10.0, description="Longest a request waits for its answer.")
    max_texts_per_request: int = Field(256, description="Most texts in one request.")
    max_text_chars: int = Field(10_000, description="Most characters in one text.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, description="Largest request body; a longer one gets 413 before it is read into memory."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for /v1/admin/*; unset = admin routes disabled."
    )
    feedback_token: SecretStr | None = Field(
        None, description="Bearer token required on /v1/feedback (labels train the next model); unset = open."
    )
    feedback_sources: list[str] = Field(
        ["api", "review", "import"], description="Values /v1/feedback accepts as `source`; anything else is 422."
    )
    feedback_measure_sources: list[str] | None = Field(
        None, description="The feedback sources whose labels are a sample of traffic chosen without looking at the "
                          "answer (an audit, a random review queue), and so measure accuracy: the drift check's "
                          "performance signal and the label-free estimate's threshold, the promotion watch, shadow "
                          "scoring, and a refit's recent test and validation sets. Labels of the other sources "
                          "(corrections sent because an answer looked wrong) train the next model and count toward "
                          "the label trigger, never toward a measure. Unset: every source measures.")
    feedback_rate_per_s: float = Field(
        50.0, description="Labels per second each feedback source may send (token bucket); beyond it 429 + Retry-After."
    )
    feedback_burst: int = Field(200, description="Labels a feedback source may send at once before the rate applies.")
    poll_interval_s: float = Field(5.0, description="How often the server checks the registry for a new champion.")
    log_embedding_share: float = Field(
        0.0, description="Share of logged predictions that keep their pooled embedding (768 bytes at float16); the "
                         "drift check re-embeds the rest of its window with the champion. 0 = none, 1 = all."
    )

    @field_validator("spin", mode="before")
    @classmethod
    def _spin_bool(cls, v: object) -> object:
        """The setting was a bool before it had three modes: true / false still mean on / off."""
        if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
            return "on" if v else "off"
        if isinstance(v, str):
            word = v.strip().lower()
            if word in ("true", "t", "yes", "y", "1"):
                return "on"
            if word in ("false", "f", "no", "n", "0"):
                return "off"
            return word  # off / run / on in any case ("ON" as the bool read it)
        return v

    @model_validator(mode="after")
    def _check(self) -> ServingSection:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serving.port must be between 0 and 65535; got {self.port}")
        if self.max_padding < 0:
            raise ValueError(f"serving.max_padding must be ≥ 0; got {self.max_padding}")
        if self.max_batch_size < 1:
            raise ValueError(f"serving.max_batch_size must be ≥ 1; got {self.max_batch_size}")
        for name in ("admin_token", "feedback_token"):
            token = getattr(self, name)
            if token is not None and not token.get_secret_value().strip():
                raise ValueError(f"serving.{name} is empty: an empty token is no protection (unset it instead)")
        if not 0.0 <= self.log_embedding_share <= 1.0:
            raise ValueError(f"serving.log_embedding_share must be between 0 and 1; got {self.log_embedding_share}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"serving.max_body_bytes must be ≥ 1024; got {self.max_body_bytes}")
        if not self.feedback_sources or any(not s or len(s) > 32 for s in self.feedback_sources):
            raise ValueError(f"serving.feedback_sources must name 1–32 character sources; got {self.feedback_sources}")
        if self.feedback_measure_sources == []:
            raise ValueError("serving.feedback_measure_sources is empty: no label would measure accuracy (no "
                             "performance signal, no rollback on live labels); unset it to let every source measure")
        unknown = sorted(set(self.feedback_measure_sources or []) - set(self.feedback_sources))
        if unknown:
            raise ValueError(f"serving.feedback_measure_sources must be among serving.feedback_sources "
                             f"({', '.join(self.feedback_sources)}); got {', '.join(unknown)}")
        if self.feedback_rate_per_s <= 0 or self.feedback_burst < 1:
            raise ValueError("serving.feedback_rate_per_s must be > 0 and serving.feedback_burst ≥ 1; "
                             f"got {self.feedback_rate_per_s} and {self.feedback_burst}")
        least = max(self.max_batch_size, self.max_texts_per_request)  # else a request within every limit never fits
        if self.queue_size < least:
            raise ValueError(f"serving.queue_size must be ≥ serving.max_batch_size ({self.max_batch_size}) and "
                             f"serving.max_texts_per_request ({self.max_texts_per_request}); got {self.queue_size}")
        return self


class DriftSection(Section):
    window_size: int = Field(1000, description="Current window: the last N predictions.")
    window_minutes: float | None = Field(
        None, description="When set, the window is the predictions of the last T minutes (still at most window_size)."
    )
    min_window: int = Field(200, description="A window smaller than this is 'insufficient data', never drift.")
    reference_size: int = Field(2000, description="Rows the champion is checked against: a sample of its training "
                                                  "rows, or the newest production traffic before its refit when it "
                                                  "was trained on new labels. A change takes effect at the next check.")
    methods: dict[str, str] = Field(
        {}, description="Per-signal drift method overrides, e.g. {confidence = 'ks'} (Evidently method names)."
    )
    thresholds: dict[str, float] = Field(
        {}, description="Per-signal fixed thresholds on Evidently's score, e.g. {text = 0.6, embedding = 0.6}; "
                        "a signal named here (or in `methods`) is judged by it instead of its calibrated threshold."
    )
    calibrated: bool = Field(
        True, description="Judge signals by thresholds calibrated on the champion's reference for "
                          "`false_alarm_rate`; false = the fixed thresholds and `min_drifted_signals` rule."
    )
    false_alarm_rate: float = Field(
        0.01, description="Chance that a check of traffic like the reference says drifted (all calibrated "
                          "signals together; measured performance is judged on its own)."
    )
    calibration_draws: int = Field(
        2000, description="Reference-vs-reference splits drawn for each signal's null distribution."
    )
    consecutive: int = Field(
        2, description="Checks in a row that must find drift (or its end) before the verdict changes; "
                       "alerts and drift-triggered refits follow the verdict."
    )
    min_drifted_signals: int = Field(
        2, description="With `calibrated = false` only: signals that must drift together for a 'drifted' verdict."
    )
    min_labels: int = Field(30, description="Labelled rows a window needs before measured accuracy counts.")
    performance_drop: float = Field(
        0.05, description="A fall in measured accuracy this large vs the champion's test accuracy is drift, "
                          "when a one-sided test also puts its p-value at or below `false_alarm_rate`."
    )
    webhook_url: SecretStr | None = Field(
        None, description="POST a JSON alert (Slack-compatible `text`) here when the verdict changes or a promotion "
                          "is rolled back; unset = off. "
                          "A secret (a Slack URL is its own key): never printed; may come from a file.",
    )
    webhook_timeout_s: float = Field(5.0, description="Timeout of one webhook attempt.")
    webhook_retries: int = Field(3, ge=1, description="Webhook attempts per delivery round (seconds apart); after a "
                                                      "failed round the alert waits in the outbox for the next (the "
                                                      "first failed round is an `alert_delayed` event).")
    webhook_give_up_hours: float = Field(
        24.0, gt=0, description="An alert that has not got through this long after it was raised is given up (an "
                                "`alert_failed` event); until then it is retried, 30 s after a failed round, doubling to "
                                "15 min, oldest first.")
    keep_reports: int = Field(
        144, description="Full reports (HTML and workspace snapshot) kept for the newest N checks; older ones only "
                         "for checks that found drift or changed the verdict, until scheduler.retention_days. The "
                         "rest keep their row (every signal, the verdict, the reason)."
    )
    threads: int = Field(1, description="CPU threads of the daemon's drift-check process (ONNX Runtime, OpenMP, BLAS).")
    nice: int = Field(10, description="CPU niceness of the daemon's drift-check process (0-19), so serving comes first.")
    timeout_minutes: float = Field(15.0, description="A drift-check process still running after this long is stopped "
                                                     "and recorded as a failed check.")
    process_checks: int = Field(
        100, description="Checks one drift-check process runs before a fresh one replaces it. The daemon keeps the "
                         "process between checks, so each check skips its ~5 s of imports (a check is mostly "
                         "imports) at the cost of the process's memory (~430 MB) between checks; 0 = a fresh "
                         "process for every check."
    )

    @model_validator(mode="after")
    def _check(self) -> DriftSection:
        known = {"text", "embedding", "label", "confidence", "length", "oov_share", "non_letter_share"}
        unknown = sorted((set(self.methods) | set(self.thresholds)) - known)
        if unknown:
            raise ValueError(f"drift.methods / drift.thresholds name unknown signals {unknown}; known: {sorted(known)}")
        if "embedding" in self.methods:
            raise ValueError("drift.methods.embedding cannot be changed yet: the embedding signal uses the model() method")
        if self.window_minutes is not None and self.window_minutes <= 0:
            raise ValueError(f"drift.window_minutes must be > 0 (or unset for a count window); got {self.window_minutes}")
        if self.min_window < 30:
            raise ValueError(f"drift.min_window must be ≥ 30; got {self.min_window}")
        if self.reference_size < self.min_window:
            raise ValueError(f"drift.reference_size must be ≥ drift.min_window ({self.min_window}); got "
                             f"{self.reference_size}")
        if self.window_size < self.min_window:
            raise ValueError(
                f"drift.window_size must be ≥ drift.min_window ({self.min_window}); got {self.window_size}"
            )
        if not 0.0001 <= self.false_alarm_rate <= 0.2:
            raise ValueError(f"drift.false_alarm_rate must be between 0.0001 and 0.2; got {self.false_alarm_rate}")
        if self.calibration_draws < 10 / self.false_alarm_rate:
            raise ValueError(f"drift.calibration_draws must be ≥ 10 / drift.false_alarm_rate "
                             f"({10 / self.false_alarm_rate:.0f}) to resolve that rate; got {self.calibration_draws}")
        if self.consecutive < 1:
            raise ValueError(f"drift.consecutive must be ≥ 1; got {self.consecutive}")
        if self.keep_reports < 1:
            raise ValueError(f"drift.keep_reports must be ≥ 1 (the newest check keeps its report); got {self.keep_reports}")
        if self.threads < 1:
            raise ValueError(f"drift.threads must be ≥ 1; got {self.threads}")
        if not 0 <= self.nice <= 19:
            raise ValueError(f"drift.nice must be between 0 and 19; got {self.nice}")
        if self.timeout_minutes <= 0:
            raise ValueError(f"drift.timeout_minutes must be > 0; got {self.timeout_minutes}")
        if self.process_checks < 0:
            raise ValueError(f"drift.process_checks must be ≥ 0 (0: a fresh process per check); got {self.process_checks}")
        # against the default, not model_fields_set: a handed-over (to_json/updated) copy sets every field
        if self.calibrated and self.min_drifted_signals != type(self).model_fields["min_drifted_signals"].default:
            raise ValueError("drift.min_drifted_signals applies only with drift.calibrated = false; calibrated "
                             "signals are combined into one test at drift.false_alarm_rate — remove it, or set "
                             "drift.calibrated = false to keep the fixed-threshold rule")
        if self.webhook_url is not None and not _http_url(self.webhook_url.get_secret_value()):
            raise ValueError(f"drift.webhook_url must be an http:// or https:// URL with a host (and a numeric "
                             f"port, if any); got {redact_url(self.webhook_url)}")
        return self


class SchedulerSection(Section):
    drift_interval_minutes: float = Field(10.0, description="Minutes between drift checks.")
    refit_cron: str | None = Field(
        None, description="Cron expression (5 fields, in UTC) for scheduled refits; unset = none."
    )
    label_trigger: int | None = Field(
        None, description="Refit once this many new labels arrived since the champion was trained; unset = off."
    )
    label_check_minutes: float = Field(5.0, description="Minutes between checks of the new-label count.")
    retention_days: float = Field(
        30.0, description="Predictions without feedback, drift reports and finished job records older than this are pruned."
    )
    misfire_grace_s: int = Field(
        600, description="A job missed by up to this many seconds (daemon down, busy) still runs once on start."
    )
    watch_minutes: float = Field(
        120.0, description="After a promotion, how long the new champion's live quality is compared with the old one."
    )
    watch_interval_minutes: float = Field(1.0, description="Minutes between post-promotion quality comparisons.")
    watch_min_labels: int = Field(30, description="Labels each champion needs in the watch before they are compared.")
    rollback_drop: float = Field(
        0.05, description="Roll back when the new champion's live accuracy is this far below the previous one's."
    )

    @field_validator("refit_cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(v)
            except ValueError as exc:
                raise ValueError(f"scheduler.refit_cron {v!r} is not a 5-field cron expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _positive(self) -> SchedulerSection:
        for name in ("drift_interval_minutes", "label_check_minutes", "watch_interval_minutes", "retention_days"):
            if getattr(self, name) <= 0:
                raise ValueError(f"scheduler.{name} must be > 0; got {getattr(self, name)}")
        return self



class PrefectSection(Section):
    api_url: str | None = Field(
        None, description="A long-lived Prefect API (http://host:4200/api); with `deployment`, refits run there."
    )
    deployment: str | None = Field(
        None, description="Deployment to run refits with, 'flow-name/deployment-name' (see deploy/prefect.yaml)."
    )
    poll_s: float = Field(10.0, description="Seconds between state polls of a deployment run.")

    @model_validator(mode="after")
    def _both(self) -> PrefectSection:
        if (self.api_url is None) != (self.deployment is None):
            raise ValueError("prefect.api_url and prefect.deployment go together: set both or neither")
        if self.deployment is not None and "/" not in self.deployment:
            raise ValueError(f"prefect.deployment must be 'flow-name/deployment-name'; got {self.deployment!r}")
        return self


class DatabaseSection(Section):
    url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL (sqlite:///… or postgresql+psycopg://…); unset = SQLite in the state directory. "
                    "A secret: never printed; may come from a file (README, Secrets).",
    )
    echo: bool = Field(False, description="Log every SQL statement.")
    timeout_s: float = Field(
        30.0, description="How long a statement waits for a SQLite lock, or a PostgreSQL connection attempt."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return None
        url = v.get_secret_value()
        if not url.startswith(("sqlite:", "postgresql")):
            raise ValueError(f"database.url must start with sqlite:/// or postgresql+psycopg://; got {redact_url(url)}")
        if url.startswith("postgresql://"):
            return SecretStr("postgresql+psycopg://" + url.removeprefix("postgresql://"))
        return v


class StorageSection(Section):
    models_url: str | None = Field(
        None,
        description="Where model versions are published: an absolute local folder, or an object-store URL "
                    "s3://bucket/prefix (endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY or AWS_SHARED_CREDENTIALS_FILE; readers cache verified copies under "
                    "<home>/cache/models); unset = <home>/models.",
    )

    @field_validator("models_url")
    @classmethod
    def _models_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        scheme, sep, rest = v.strip().partition("://")
        if not sep or scheme == "file":
            path = Path(rest if sep else scheme).expanduser()
            if not path.is_absolute():
                raise ValueError(f"storage.models_url must be an absolute folder or s3://bucket/prefix; got {v!r}")
            return str(path)
        if scheme != "s3":
            raise ValueError(f"storage.models_url must be a local folder or s3://bucket/prefix; "
                             f"{scheme}:// is not supported")
        bucket = rest.split("/", 1)[0]
        if not bucket or "@" in bucket or ":" in bucket:
            raise ValueError("storage.models_url must be s3://bucket/prefix with a bucket name and no credentials "
                             "(they come from AWS_* variables or credential files)")
        return f"s3://{rest.strip('/')}"


def ort_spin_entries(spin: str) -> dict[str, str]:
    """ONNX Runtime session config entries for a ``serving.spin`` mode (off, run or on)."""
    if spin not in SPIN_MODES:
        raise ValueError(f"serving.spin must be off, run or on; got {spin!r}")
    return {"session.intra_op.allow_spinning": "0" if spin == "off" else "1",
            "session.force_spinning_stop": "1" if spin == "run" else "0"}


def _http_url(url: str) -> bool:
    """An http(s) URL a client can send to: scheme, host, and a port that is a number when given."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
