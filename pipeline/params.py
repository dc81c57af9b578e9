"""params.yaml, validated on load: a schema, nothing else.

Every section is a pydantic model that forbids unknown keys, so a typo or a bad type is a clear
error naming the key, not a KeyError deep inside a stage. Detector hyperparameters are validated
by each detector's own config dataclass (``models.registry``, ``models/configs/<name>.py``).

Loading params changes nothing in the process: storage bounds, thread pools and the MLflow client's
environment are applied by :func:`pipeline.runtime.apply`, once per entry point. Importing this module
loads only pydantic and PyYAML; the validators import what they check (pandas for durations, the
metric and threshold tables) when they run.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ParamsError

DEFAULT_PARAMS = Path("params.yaml")


class _Section(BaseModel):
    # NaN and infinity are never a setting: `-S storage.max_read_mb=.inf` would switch a bound off.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Paths(_Section):
    labels: str = "data/labels"  # the reviewed label set (pipeline/review): spans.parquet, labels.json
    raw: str = "data/raw"
    validated: str = "data/validated"
    quarantine: str = "data/quarantine"
    validation_report: str = "reports/validation"
    windows: str = "data/windows"
    artifacts: str = "models/artifacts"
    train_reports: str = "reports/train"
    evaluation: str = "reports/evaluation"
    metrics: str = "metrics"
    plots: str = "reports/plots"
    register_report: str = "reports/register"


class CsvColumns(_Section):
    """``data.csv``: how csv: sources are laid out (pipeline/data/sources.py::read_csv)."""

    layout: Literal["long", "wide"] = "long"
    kpi_id: str | None = "kpi_id"           # long
    timestamp: str = "timestamp"            # both layouts
    value: str = "value"                    # long
    label: str | None = "label"             # long
    columns: list[str] | None = None        # wide: the KPI columns; None: every column but the timestamp
    stem_prefix: bool = False               # wide: KPI id "<file stem>/<column>" instead of the column name
    timezone: str = "UTC"                   # the zone of naive timestamps

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as UTC, Europe/Berlin or "
                             "America/New_York (a fixed offset: Etc/GMT-1 is UTC+1)") from None
        return v

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("columns lists the KPI columns of wide files; null takes every column but the timestamp")
            if len(set(v)) != len(v):
                raise ValueError(f"columns must not repeat a name: {v}")
        return v

    @model_validator(mode="after")
    def _layout(self):
        if self.layout == "long" and (self.columns is not None or self.stem_prefix):
            raise ValueError("columns and stem_prefix apply to layout: wide; a long file names its KPI in "
                             "the kpi_id column")
        if self.columns is not None and self.timestamp in self.columns:
            raise ValueError(f"columns must not list the timestamp column {self.timestamp!r}")
        return self


class PrometheusParams(_Section):
    """How a ``prometheus:URL?query=PROMQL`` source reads ``/api/v1/query_range`` (pipeline.data.sources)."""

    step: str = "1m"                     # the query's resolution: one point per KPI per step
    start: str | None = None             # None: end - range
    end: str | None = None               # None: now (both rounded down to the step)
    range: str = "30D"                   # how far back start is when it is None
    kpi_labels: list[str] | None = None  # the labels that name a KPI; None: all of the series' labels
    auth_header_env: str | None = None   # environment variable holding the Authorization header value
    max_points_per_query: int = Field(11_000, ge=2)  # Prometheus refuses more per series and query

    @field_validator("step", "range")
    @classmethod
    def _positive(cls, v: str, info) -> str:
        return _checked_duration(v, info.field_name, positive=True)

    @field_validator("start", "end")
    @classmethod
    def _time(cls, v: str | None, info) -> str | None:
        import pandas as pd

        if v is not None:
            try:
                pd.Timestamp(v)
            except ValueError:
                raise ValueError(f"{info.field_name} must be a timestamp such as 2026-01-01 or "
                                 f"2026-01-01T12:00:00Z, got {v!r}") from None
        return v


class DataParams(_Section):
    train: str = "synthetic:"
    test: str | None = None
    csv: CsvColumns = Field(default_factory=CsvColumns)
    prometheus: PrometheusParams = Field(default_factory=PrometheusParams)

    @field_validator("train", "test")
    @classmethod
    def _spec_has_scheme(cls, v: str | None) -> str | None:
        if v is not None and ":" not in v:
            raise ValueError(f"source spec {v!r} needs a scheme: synthetic:, nab:DIR, aiops:FILE, csv:PATH or "
                             "prometheus:URL?query=PROMQL")
        return v


class SyntheticParams(_Section):
    n_kpis: int = Field(8, ge=1)
    start: str = "2026-01-01"
    end: str = "2026-01-29"
    interval: str = "5min"
    seed: int = 7
    trend_per_day: float = 0.02
    noise: float = Field(0.05, ge=0)
    anomalies_per_week: float = Field(12, ge=0)

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        return _checked_duration(v, "interval", positive=True)

    @model_validator(mode="after")
    def _range(self):
        import pandas as pd

        if pd.Timestamp(self.end) <= pd.Timestamp(self.start):
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


class ValidateParams(_Section):
    min_points_per_kpi: int = Field(200, ge=1)
    max_gap_ratio: float = Field(0.2, ge=0, le=1)
    interval_tolerance: float = Field(0.9, ge=0, le=1)


class WindowParams(_Section):
    length: int = Field(48, ge=2)
    stride: int = Field(1, ge=1)
    train_fraction: float = Field(0.6, gt=0, lt=1)
    val_fraction: float = Field(0.2, ge=0, lt=1)
    max_train_points: int | None = Field(None, ge=1)
    max_val_points: int | None = Field(None, ge=0)
    clip_sigma: float = Field(1.0e6, gt=0, le=1.0e30)

    @model_validator(mode="after")
    def _fractions(self):
        if self.train_fraction + self.val_fraction > 1:
            raise ValueError("train_fraction + val_fraction must be at most 1")
        return self


class TrainBudget(_Section):
    """Caps on every neural detector's training, on top of ``train.max_epochs`` and the detector's own
    ``max_epochs`` / ``max_train_windows`` (None: no cap). The DVC pipeline's train stage applies them;
    ``kpiguard bench`` trains at the full budget (:func:`pipeline.tools.bench.bench_params` drops them)."""

    max_epochs: int | None = Field(None, ge=1)         # epochs (per phase for vae_lstm)
    max_train_windows: int | None = Field(None, ge=1)  # training samples drawn per epoch
    max_val_windows: int | None = Field(None, ge=1)    # validation samples of the early-stopping loss


class TrainParams(_Section):
    device: str = "auto"
    seed: int = 0
    detectors: list[str] = Field(default_factory=list)
    max_epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)  # CPU threads per training task; None: pipeline.threads decides
    budget: TrainBudget = Field(default_factory=TrainBudget)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not v.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v


class EvaluateParams(_Section):
    champion_metric: str = "aiops_f1"
    champion_folds: int = Field(3, ge=1, le=20)  # rolling-origin validation folds the champion is picked on; 1: one split
    calibration: dict[str, Any] = Field(default_factory=lambda: {"method": "ecdf"})
    calibration_by_detector: dict[str, dict[str, Any]] = Field(default_factory=dict)
    threshold: dict[str, Any] = Field(default_factory=lambda: {"method": "best_f1", "scope": "global"})
    delay: int = Field(7, ge=0)
    nab_probation: int | None = Field(None, ge=0)
    plot_kpis: int = Field(3, ge=0)
    # The label-free path (pipeline.eval.selection): fewer labelled validation events than min_events.
    alarm_budget: float = Field(2.0, gt=0)  # expected alarm points per KPI per day (threshold method budget)
    default_detector: str = "sequence_novelty"  # the champion unless a challenger is better beyond the noise
    min_events: int = Field(50, ge=1)  # labelled validation events (segments) needed to rank by the metric
    bootstrap_draws: int = Field(200, ge=20, le=100_000)  # resamples of the validation events (intervals)
    bootstrap_level: float = Field(0.9, gt=0, lt=1)  # the intervals' coverage
    bootstrap_seed: int = 0  # the same for every detector and version: their draws are paired

    @field_validator("champion_metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        from pipeline.eval.metrics import METRICS

        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; known: {', '.join(METRICS)}")
        return v

    @field_validator("calibration")
    @classmethod
    def _calibration(cls, v: dict[str, Any]) -> dict[str, Any]:
        from models.calibration import make_calibration

        make_calibration(dict(v))  # raises ValueError naming the bad key or method
        return v

    @field_validator("calibration_by_detector")
    @classmethod
    def _calibration_by_detector(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from models import registry
        from models.calibration import make_calibration

        for name, cfg in v.items():
            if name not in registry.names():
                raise ValueError(f"unknown detector {name!r}; registered: {', '.join(registry.names())}")
            make_calibration(dict(cfg))
        return v

    def calibration_for(self, detector: str) -> dict[str, Any]:
        """The calibration config of one detector: its own entry, else the default."""
        return dict(self.calibration_by_detector.get(detector) or self.calibration)

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: dict[str, Any]) -> dict[str, Any]:
        from pipeline.eval.thresholds import make_threshold

        if "budget" in v:
            raise ValueError("the budget of threshold method 'budget' is evaluate.alarm_budget, not a threshold key")
        make_threshold(dict(v))  # raises ValueError naming the bad key or method
        return v

    @field_validator("default_detector")
    @classmethod
    def _default_detector(cls, v: str) -> str:
        from models import registry

        if v not in registry.names():
            raise ValueError(f"unknown detector {v!r}; registered: {', '.join(registry.names())}")
        if registry.is_supervised(v):
            raise ValueError(f"{v} is supervised: it cannot be the default of the label-free path; choose one of "
                             f"{', '.join(n for n in registry.names() if not registry.is_supervised(n))}")
        return v

    def threshold_rule(self, label_free: bool = False) -> dict[str, Any]:
        """The threshold config to fit: ``threshold``; on the label-free path a method that fits on labels
        (``best_f1``) becomes the alarm budget (a label-free method chosen there is kept). The budget is
        always ``alarm_budget``."""
        from pipeline.eval.thresholds import NEEDS_LABELS

        rule = dict(self.threshold)
        if label_free and rule.get("method") in NEEDS_LABELS:
            rule["method"] = "budget"
        if rule.get("method") == "budget":
            rule["budget"] = self.alarm_budget
        return rule


class MlflowParams(_Section):
    experiment: str = "kpiguard"
    serving_model: str = "kpiguard"
    detector_model_prefix: str = "kpiguard-"
    min_improvement: float = Field(0.0, ge=0)
    connect_retries: int = Field(3, ge=0)
    retry_backoff_s: float = Field(1.0, ge=0)
    request_timeout_s: float = Field(30.0, gt=0)


class ScoreParams(_Section):
    model_uri: str = "models:/kpiguard@champion"
    input: str = "synthetic:"
    output: str = "data/scores"
    quarantine_output: str | None = None  # the rows scoring quarantined; None: <output>_quarantine
    staging: str = "data/daily"
    shards: int = Field(1, ge=1)
    context: str = "3D"
    max_quarantined_fraction: float = Field(0.05, ge=0, le=1)
    reports: str = "reports/daily"
    report_bucket: str | None = None
    incident_gap: str = "30min"  # spans at most this far apart are one incident (pipeline.batch.incidents)
    allowed_inputs: list[str] = Field(default_factory=list)
    threads: int | None = Field(None, ge=1)  # CPU threads for scoring (score, evaluate, register); None: auto
    allow_untrained_kpis: bool = False  # score KPIs the model has no training statistics for (a warning, not an error)
    training_range_tolerance: str = "7D"  # a day starting later than this after the model's data ended is "outside"
    mismatch_factor: float = Field(10.0, gt=0)  # alarm rate above this many times evaluate.alarm_budget: a mismatch
    max_alarm_fraction: float | None = Field(None, ge=0, le=1)  # a day flagging more than this fails the run; None: off
    schedule: str = "@daily"  # the kpiguard_score DAG's cron (or preset); sub-daily: each run scores its interval
    alert_lookback: str = "1D"  # sub-daily runs build incidents from this much scored history before the interval's end

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        from croniter import croniter  # Airflow's own cron parser: what it accepts, the DAG accepts

        if not croniter.is_valid(v):
            raise ValueError(f"schedule must be a cron expression (e.g. '*/5 * * * *') or a preset such as "
                             f"@daily or @hourly, got {v!r}")
        return v

    @field_validator("context", "training_range_tolerance", "alert_lookback", "incident_gap")
    @classmethod
    def _duration(cls, v: str, info) -> str:
        return _checked_duration(v, info.field_name)


class StorageParams(_Section):
    """Bounds of every remote read (pipeline/io/storage.py); applied by pipeline.runtime.apply."""

    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=20)
    max_read_mb: float = Field(2048.0, gt=0)


class AlertmanagerSink(_Section):
    url: str | None = None  # e.g. http://127.0.0.1:9093; None: off


class WebhookSink(_Section):
    url: str | None = None  # e.g. a Slack incoming webhook; None: off
    auth_header_env: str | None = None  # the environment variable holding the Authorization header's value
    send_resolved: bool = True  # one more post when an incident is over

    @field_validator("auth_header_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        import re

        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"auth_header_env names an environment variable (letters, digits, _), got {v!r}")
        return v


# Labels kpiguard sets on every Alertmanager alert; static ``alerts.labels`` must not shadow them.
ALERT_LABELS = ("alertname", "kpi", "detector", "severity")


class AlertParams(_Section):
    """``alerts``: where incidents go (pipeline/batch/alerts.py). Every sink is off by default."""

    alertmanager: AlertmanagerSink = Field(default_factory=AlertmanagerSink)
    webhook: WebhookSink = Field(default_factory=WebhookSink)
    alertname: str = Field("KpiguardAnomaly", min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    critical_severity: float = Field(2.0, gt=0)  # a KPI this many times over its threshold: severity=critical
    report_url: str | None = None  # template with {day}, e.g. https://reports.example/{day}.html
    ledger: str = "sqlite:///data/alerts/ledger.db"
    max_attempts: int = Field(3, ge=1, le=20)
    retry_backoff_s: float = Field(1.0, ge=0)
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("alertmanager", "webhook")
    @classmethod
    def _http_url(cls, v, info):
        if v.url is not None and not v.url.startswith(("http://", "https://")):
            raise ValueError(f"{info.field_name}.url must be an http:// or https:// URL, got {v.url!r}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        import re

        bad = [k for k in v if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k) or k.startswith("__")]
        if bad:
            raise ValueError(f"label names must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __: {bad}")
        taken = sorted(set(v) & set(ALERT_LABELS))
        if taken:
            raise ValueError(f"labels {taken} are set by kpiguard on every alert ({', '.join(ALERT_LABELS)})")
        return v

    @field_validator("report_url")
    @classmethod
    def _report_url(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                v.format(day="2026-01-28")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"report_url may use only the placeholder {{day}}, got {v!r} ({exc!r})") from None
        return v

    @field_validator("ledger")
    @classmethod
    def _ledger(cls, v: str) -> str:
        return _database_url(v, "ledger", "sqlite:///data/alerts/ledger.db")

    def sinks(self) -> dict[str, str]:
        """The configured sinks, name -> URL (empty: alerting is off)."""
        return {name: sink.url for name, sink in (("alertmanager", self.alertmanager), ("webhook", self.webhook))
                if sink.url}


class ReviewParams(_Section):
    """``reviews``: the people's verdicts on incidents and their reports of missed anomalies
    (pipeline/review/), and how they become training labels."""

    store: str = "sqlite:///reviews.db"  # SQLAlchemy URL; postgresql+psycopg2://user@host/db in a deployment
    apply: bool = True  # merge the exported labels into an unlabelled data.train (when there are enough)
    host: str = "127.0.0.1"  # kpiguard serve
    port: int = Field(8765, ge=1, le=65535)
    token_env: str = Field("KPIGUARD_REVIEW_TOKEN", min_length=1)  # the environment variable holding the write token
    mute_tolerance: str = "30min"  # a dismissed alarm's time of day, widened by this each side, is its pattern's window

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        return _database_url(v, "store", "sqlite:///reviews.db")

    @field_validator("mute_tolerance")
    @classmethod
    def _mute_tolerance(cls, v: str) -> str:
        # 12 h each side is the whole day: every dismissal of a KPI would look like one pattern
        return _checked_duration(v, "mute_tolerance", below="12h")


def _checked_duration(v: str, field: str, positive: bool = False, below: str | None = None) -> str:
    """``v`` when pandas reads it as a duration that is at least 0 (above 0: ``positive``) and under
    ``below``; else the ValueError that names ``field``: the one check of every duration param."""
    import pandas as pd

    try:
        duration = pd.Timedelta(v)
    except (ValueError, TypeError):
        raise ValueError(f"{field} must be a duration such as 30min, 12h or 3D, got {v!r}") from None
    if duration < pd.Timedelta(0) or (positive and duration == pd.Timedelta(0)):
        raise ValueError(f"{field} must be a {'positive' if positive else 'non-negative'} duration, got {v!r}")
    if below is not None and duration >= pd.Timedelta(below):
        raise ValueError(f"{field} must be under {below}, got {v!r}")
    return v


def _database_url(v: str, field: str, example: str) -> str:
    """``v`` when SQLAlchemy can parse it as a database URL; else the error that names ``field``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(v)
    except ArgumentError:
        raise ValueError(f"{field} must be a SQLAlchemy URL such as {example} or "
                         f"postgresql+psycopg2://user@host/db, got {v!r}") from None
    return v


class Params(_Section):
    # Sections default by factory: building a default section runs its validators, which import what they
    # check; at import time nothing is built.
    paths: Paths = Field(default_factory=Paths)
    data: DataParams = Field(default_factory=DataParams)
    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)
    validation: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    windows: WindowParams = Field(default_factory=WindowParams)
    train: TrainParams = Field(default_factory=TrainParams)
    detectors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)
    score: ScoreParams = Field(default_factory=ScoreParams)
    storage: StorageParams = Field(default_factory=StorageParams)
    alerts: AlertParams = Field(default_factory=AlertParams)
    reviews: ReviewParams = Field(default_factory=ReviewParams)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def detector_config(self, name: str) -> dict[str, Any]:
        return dict(self.detectors.get(name) or {})

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        """A stable hash of the effective parameters (for MLflow and run records)."""
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> Params:
    """Read and validate params.yaml; ``overrides`` are ``dotted.key=yaml_value`` strings (the CLI's ``-S``)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for item in overrides or []:
        _apply_override(raw, item)
    return parse_params(raw, source=str(path))


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ParamsError(f"{source}: invalid parameters:\n  " + "\n  ".join(lines)) from None
    _check_detectors(params, source)
    return params


def _check_detectors(params: Params, source: str) -> None:
    # The config classes live in models.configs, apart from the networks, so this validates every
    # detectors.<name> section with the detector's own rules without importing torch: a params error
    # is reported at once, and stages that never train (ingest, validate, windows) never load torch.
    from models import registry

    known = registry.names()
    for name in [*params.train.detectors, *params.detectors]:
        if name not in known:
            raise ParamsError(f"{source}: unknown detector {name!r}; registered: {', '.join(known)}")
    for name, cfg in params.detectors.items():
        try:
            registry.config_class(name).from_dict(cfg or {})
        except (TypeError, ValueError) as exc:
            raise ParamsError(f"{source}: detectors.{name}: {exc}") from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ParamsError(f"override {item!r} must look like section.key=value")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {item!r}: {part} is not a section")
    try:
        parsed = yaml.safe_load(value)  # safe_load: a !!python tag is refused, never constructed
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ParamsError(f"override {item!r}: the value {value!r} is not valid YAML ({problem}); "
                          "quote strings and close brackets, e.g. -S windows.length=96") from None
    # YAML reads 2026-01-15 as a date; every date in params is a string
    node[parts[-1]] = parsed.isoformat() if isinstance(parsed, (datetime.date, datetime.datetime)) else parsed
