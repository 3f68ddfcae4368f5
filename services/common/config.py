"""Typed settings read once from the environment, on pydantic-settings.

Each service declares its settings as a class of ``ServerSettings`` (a
``BaseSettings``) with typed, ranged fields, and builds it once at start with
``from_env()``; nothing else reads ``os.environ``. A field's variable is its
name under the class's ``env_prefix`` (``listen`` → ``GATEWAY_LISTEN``), or
its ``validation_alias`` (one name, or ``AliasChoices`` for a name and its
aliases, first found wins). Secrets are ``SecretStr`` and may also come from
a mounted file named by ``<NAME>_FILE``, which wins over ``<NAME>``. A field
whose type is another ``EnvSettings`` class is a group read from the same
environment (``X | None``: only when ``X.configured`` says so).

Every bad value ends as one ``ConfigError`` line naming the variable, the
value and what is allowed: ``GATEWAY_MAX_RUNNING_JOBS='0' is outside the
allowed range [1, inf]``. Built directly (``GatewaySettings(listen=...)``, as
the tests do), a class takes its defaults and the arguments, never the
environment.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import annotated_types
from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from services.common.tls_files import TlsFiles, check_server_files

MiB = 1024 * 1024

# The largest image that travels inside one gRPC message: a 2048x2048 PNG of
# noise is ~12.6 MB, and a reference face may be 10 MB. 32 MiB leaves room
# for protobuf framing and a preview without inviting unbounded messages.
MAX_MESSAGE_BYTES = 32 * MiB

_LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]*\]|[^:\s]*):\d{1,5}$")
Samplers = Literal["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
                   "parentbased_traceidratio"]

# Suffix of the variable naming a file that holds a secret (a mounted Kubernetes or Docker secret).
FILE_SUFFIX = "_FILE"


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


def _stripped(transform: typing.Callable[[str], str]) -> BeforeValidator:
    return BeforeValidator(lambda value: transform(value.strip()) if isinstance(value, str) else value)


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


# Field types every service uses.
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], _stripped(str.upper)]
Lowercase = _stripped(str.lower)
LogFormat = Annotated[Literal["text", "json"], Lowercase]
# ``a, b,c`` → ("a", "b", "c"); blanks dropped (NoDecode: not read as JSON).
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]


class EnvSettings(BaseSettings):
    """Settings read from an environment mapping by ``from_env``; see the module docstring."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True,
                                      validate_by_name=True, validate_by_alias=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the constructor's arguments: from_env gathers the environment itself, so that a
        # test can hand it a mapping and a directly built instance never sees os.environ.
        return (init_settings,)

    @classmethod
    def configured(cls, environ: Mapping[str, str]) -> bool:
        """Whether an optional group (``X | None``) is set up in ``environ``; always, unless overridden."""
        return True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Reads every field (and group) from ``environ`` (``os.environ`` by default); ConfigError when one is bad."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            group, optional = _group_of(field)
            if group is not None:
                values[name] = group.from_env(environ) if not optional or group.configured(environ) else None
        try:
            values.update(_EnvironSource(cls, environ)())
            values.update(_SecretFileSource(cls, environ)())
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError("; ".join(_describe(error, cls, environ) for error in exc.errors())) from None
        except SettingsError as exc:  # a source failed: an unreadable secret file says which
            if isinstance(exc.__cause__, ConfigError):
                raise exc.__cause__ from None
            raise ConfigError(str(exc)) from None

    @classmethod
    def env_names(cls) -> frozenset[str]:
        """Every variable this class (and its groups) reads, ``<NAME>_FILE`` of its secrets included."""
        names: set[str] = set()
        for name, field in cls.model_fields.items():
            group, _ = _group_of(field)
            if group is not None:
                names |= group.env_names()
                continue
            variables = _variables(cls, name, field)
            names.update(variables)
            if _is_secret(field):
                names.update(variable + FILE_SUFFIX for variable in variables)
        return frozenset(names)


class TracingSettings(EnvSettings):
    """The standard OpenTelemetry variables this project reads (services/common/tracing.py; the OTLP
    exporter reads its other OTEL_EXPORTER_OTLP_* variables itself)."""

    endpoint: str | None = Field(None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                                                                     "OTEL_EXPORTER_OTLP_ENDPOINT"))
    protocol: Annotated[Literal["grpc"], Lowercase] = Field(
        "grpc", validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"))
    # Plain gRPC to the collector (an http:// endpoint is plain too); TLS otherwise.
    insecure: bool | None = Field(None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_INSECURE",
                                                                      "OTEL_EXPORTER_OTLP_INSECURE"))
    # "key=value,..." sent with every export; may hold an API key.
    headers: SecretStr | None = Field(None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                                                                          "OTEL_EXPORTER_OTLP_HEADERS"))
    exporter: Annotated[Literal["otlp", "none"], Lowercase] = Field("otlp", validation_alias="OTEL_TRACES_EXPORTER")
    service_name: str | None = Field(None, validation_alias="OTEL_SERVICE_NAME")
    resource_attributes: str | None = Field(None, validation_alias="OTEL_RESOURCE_ATTRIBUTES")
    sampler: Annotated[Samplers, Lowercase] = Field("parentbased_always_on", validation_alias="OTEL_TRACES_SAMPLER")
    # The ratio of the traceidratio samplers (1.0 when unset, as the specification says).
    sampler_arg: float | None = Field(None, ge=0.0, le=1.0, validation_alias="OTEL_TRACES_SAMPLER_ARG")
    sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")

    @property
    def enabled(self) -> bool:
        """True when spans are to be exported."""
        return bool(self.endpoint) and not self.sdk_disabled and self.exporter != "none"

    def describe(self) -> str:
        """One value for the start-up log line."""
        if not self.enabled:
            return "off"
        ratio = f" {self.sampler_arg:g}" if self.sampler_arg is not None else ""
        return f"{self.endpoint} ({self.sampler}{ratio})"


class ServerSettings(EnvSettings):
    """What every gRPC service reads: where it listens, how it stops, message size, logs, metrics, traces.

    A service's class sets ``env_prefix`` (``GATEWAY_``), its default ``listen``
    and the aliases of ``log_level`` it documents.
    """

    listen: str = "127.0.0.1:0"
    # In-flight calls get this long to finish when the server stops.
    grace_seconds: float = Field(10.0, ge=0.0, le=3600.0)
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=4 * MiB, le=512 * MiB, validation_alias="MAX_MESSAGE_BYTES")
    log_level: LogLevel = Field("INFO", validation_alias="LOG_LEVEL")
    # "json": one JSON object per line (the container images set it); "text" reads better on a terminal.
    log_format: LogFormat = Field("text", validation_alias="LOG_FORMAT")
    # host:port of the Prometheus endpoint (GET /metrics), e.g. 0.0.0.0:9464; unset: none.
    metrics_listen: str | None = None
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    # TLS (services/common/tls.py): a certificate and its key serve TLS; a CA as well requires
    # every client to present a certificate it signed (mTLS).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    # A second port, plaintext, that serves grpc.health.v1 only: for probes that cannot speak TLS
    # (Kubernetes' built-in gRPC probes). Unset: none.
    health_listen: str | None = None

    @field_validator("metrics_listen", "health_listen")
    @classmethod
    def _host_and_port(cls, listen: str | None) -> str | None:
        if listen is not None and not _LISTEN.match(listen.strip()):
            raise ValueError("is not host:port (e.g. 0.0.0.0:9464)")
        return listen.strip() if listen is not None else None

    @property
    def tls(self) -> TlsFiles:
        """The server's TLS files, with the variables that name them."""
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file,
                        variables=tls_variables(type(self), "tls_"))

    @model_validator(mode="after")
    def _tls_files_load(self) -> Self:
        check_server_files(self.tls)
        return self


def tls_variables(cls: type[EnvSettings], prefix: str) -> tuple[str, str, str]:
    """The variables of a class's ``<prefix>cert_file``, ``<prefix>key_file`` and ``<prefix>ca_file`` fields."""
    cert, key, ca = (_variables(cls, f"{prefix}{part}_file", cls.model_fields[f"{prefix}{part}_file"])[0]
                     for part in ("cert", "key", "ca"))
    return cert, key, ca


# --- reading the environment ----------------------------------------------------------------------

def _group_of(field: FieldInfo) -> tuple[type[EnvSettings] | None, bool]:
    """(the EnvSettings class a field holds, whether it may be None), or (None, False) for a plain field."""
    annotation = field.annotation
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        annotation = members[0] if len(members) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, EnvSettings):
        return annotation, optional
    return None, False


def _is_secret(field: FieldInfo) -> bool:
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _variables(cls: type[EnvSettings], name: str, field: FieldInfo) -> list[str]:
    """The variables a field reads, in the order they are tried."""
    alias = field.validation_alias
    if alias is None:
        return [f"{cls.model_config.get('env_prefix', '')}{name}".upper()]
    if isinstance(alias, str):
        return [alias]
    choices = alias.choices if isinstance(alias, AliasChoices) else []
    return [choice for choice in choices if isinstance(choice, str)]


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping; groups are left to ``from_env``."""

    def __init__(self, settings_cls: type[EnvSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)

    def _extract_field_info(self, field: FieldInfo, field_name: str,
                            model_config: Mapping[str, Any] | None = None) -> list[tuple[str, str, bool]]:
        infos = super()._extract_field_info(field, field_name, model_config)
        # validate_by_name (for direct construction) would also read <prefix><field name>: aliases only.
        return [info for info in infos if info[0] != field_name] if field.validation_alias else infos

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if _group_of(field)[0] is not None:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class _SecretFileSource(_EnvironSource):
    """``SecretStr`` fields from the file named by ``<NAME>_FILE``; an empty file counts as unset."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if not _is_secret(field):
            return None, field_name, False
        key = field_name
        for key, variable, _ in self._extract_field_info(field, field_name):
            path = self.env_vars.get(variable + FILE_SUFFIX.lower())
            if path:
                try:
                    return Path(path).read_text().strip() or None, key, False
                except OSError as exc:
                    raise ConfigError(f"{variable.upper()}{FILE_SUFFIX}={path} cannot be read: {exc.strerror}") \
                        from None
        return None, key, False


# --- one message per bad value ------------------------------------------------------------------

_PROBLEMS = {
    "int_parsing": "is not an integer", "int_from_float": "is not an integer", "int_type": "is not an integer",
    "float_parsing": "is not a number", "float_type": "is not a number",
    "bool_parsing": "is not a boolean (use true or false)", "bool_type": "is not a boolean (use true or false)",
}
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _describe(error: ErrorDetails, cls: type[EnvSettings], environ: Mapping[str, str]) -> str:
    """One line: the variable, the value it has, and what is wrong or allowed."""
    kind = error["type"]
    context = error.get("ctx") or {}
    if not error["loc"]:  # a check across fields (a model validator): its own message names them
        return str(context.get("error", error["msg"]))
    key = str(error["loc"][0])
    name, field = next(((n, f) for n, f in cls.model_fields.items()
                        if key == n or key in _variables(cls, n, f)), (key, None))
    variables = _variables(cls, name, field) if field is not None else [key]
    if kind == "missing":
        names = " or ".join([*variables, *([variables[0] + FILE_SUFFIX] if field and _is_secret(field) else [])])
        return f"{names} is required but not set"
    variable = next((v for v in variables if environ.get(v)), None)
    if variable is None:
        variable = next((v + FILE_SUFFIX for v in variables if environ.get(v + FILE_SUFFIX)), variables[0])
        shown = "<from the file>"
    else:
        hidden = field is not None and (_is_secret(field) or not field.repr)
        shown = "<hidden>" if hidden else repr(environ[variable])
    where = f"{variable}={shown}"
    if kind in _RANGE_ERRORS and field is not None:
        return f"{where} is outside the allowed range {_range(field)}"
    if kind in _PROBLEMS:
        allowed = f" (allowed range {_range(field)})" if field is not None and _range(field) != "[-inf, inf]" else ""
        return f"{where} {_PROBLEMS[kind]}{allowed}"
    if kind == "literal_error":
        return f"{where} is not one of {str(context.get('expected', '')).replace(' or ', ', ').replace(chr(39), '')}"
    if kind == "value_error":
        return f"{where} {context.get('error', error['msg'])}"
    return f"{where}: {error['msg']}"


def _range(field: FieldInfo) -> str:
    low, high, low_bracket, high_bracket = "-inf", "inf", "[", "]"
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"{item.ge:g}" if isinstance(item.ge, float) else str(item.ge)
        elif isinstance(item, annotated_types.Gt):
            low, low_bracket = str(item.gt), "("
        elif isinstance(item, annotated_types.Le):
            high = f"{item.le:g}" if isinstance(item.le, float) else str(item.le)
        elif isinstance(item, annotated_types.Lt):
            high, high_bracket = str(item.lt), ")"
    return f"{low_bracket}{low}, {high}{high_bracket}"

