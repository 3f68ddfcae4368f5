"""cert-manager's objects, checked offline: the schema of the fields facegen uses, and Go durations.

cert-manager's CRDs are not among kubernetes-validate's schemas, and there is no
cluster here to ask. So the ``cert-manager.io/v1`` Certificate and Issuer fields
that the manifests may use are written down below from cert-manager's API
reference (v1.12 to v1.19: the fields, their types, enumerations and required
ones), strictly: a field that is misspelt, misplaced or of the wrong type fails,
as the API server's structural schema would reject it. Fields cert-manager has
and facegen does not use (ACME, Vault, Venafi issuers; keystores; name
constraints) are left out on purpose, so using one means adding it here first.
Beyond the schema, ``check`` reads what the API server would only notice later:
durations in Go's syntax, within cert-manager's limits.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema

Obj = dict[str, Any]

API_VERSION = "cert-manager.io/v1"
# Secret keys cert-manager writes for a Certificate (ca.crt when the issuer knows its CA).
SECRET_KEYS = ("tls.crt", "tls.key", "ca.crt")
USAGES = ["signing", "digital signature", "content commitment", "key encipherment", "key agreement",
          "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
          "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
          "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]

# What cert-manager requests when a Certificate lists no usages.
DEFAULT_USAGES = ("digital signature", "key encipherment")


def usages(certificate: Obj) -> tuple[str, ...]:
    """The key usages a Certificate asks for (cert-manager's default when it lists none)."""
    return tuple(certificate["spec"].get("usages", DEFAULT_USAGES))


_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
                   "namespace": {"type": "string"},
                   "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                   "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
    "additionalProperties": False,
}
_ISSUER_REF = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                   "group": {"const": "cert-manager.io"}},
    "additionalProperties": False,
}
CERTIFICATE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": API_VERSION}, "kind": {"const": "Certificate"}, "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "issuerRef": _ISSUER_REF,
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": _STRINGS, "ipAddresses": _STRINGS, "uris": _STRINGS, "emailAddresses": _STRINGS,
                "isCA": {"type": "boolean"},
                "duration": {"type": "string"}, "renewBefore": {"type": "string"},
                "renewBeforePercentage": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100},
                "usages": {"type": "array", "items": {"enum": USAGES}, "uniqueItems": True},
                "privateKey": {
                    "type": "object",
                    "properties": {"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                                   "size": {"type": "integer"},
                                   "encoding": {"enum": ["PKCS1", "PKCS8"]},
                                   "rotationPolicy": {"enum": ["Never", "Always"]}},
                    "additionalProperties": False,
                },
                "subject": {"type": "object", "properties": {
                    key: _STRINGS for key in ("organizations", "organizationalUnits", "countries", "localities",
                                              "provinces", "streetAddresses", "postalCodes")},
                    "additionalProperties": False},
                "secretTemplate": {"type": "object", "properties": {
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
                    "additionalProperties": False},
                "revisionHistoryLimit": {"type": "integer", "minimum": 1},
            },
            "additionalProperties": False,
            "not": {"required": ["renewBefore", "renewBeforePercentage"]},
        },
    },
    "additionalProperties": False,
}
ISSUER = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": API_VERSION}, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "metadata": _METADATA,
        "spec": {
            "type": "object",
            # Exactly one way of issuing; only the two facegen's manifests use are spelt out.
            "oneOf": [
                {"required": ["selfSigned"]}, {"required": ["ca"]},
            ],
            "properties": {
                "selfSigned": {"type": "object", "properties": {"crlDistributionPoints": _STRINGS},
                               "additionalProperties": False},
                "ca": {"type": "object", "required": ["secretName"],
                       "properties": {"secretName": {"type": "string", "minLength": 1},
                                      "crlDistributionPoints": _STRINGS, "ocspServers": _STRINGS,
                                      "issuingCertificateURLs": _STRINGS},
                       "additionalProperties": False},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
SCHEMAS = {"Certificate": CERTIFICATE, "Issuer": ISSUER, "ClusterIssuer": ISSUER}

_DURATION = re.compile(r"^(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_seconds(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string (``2160h``, ``1h30m``); ValueError otherwise."""
    if text == "0":
        return 0.0
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a Go duration (e.g. 2160h, 90m)")
    return sum(float(number) * _UNIT_SECONDS[unit]
               for number, unit in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", text))


def is_cert_manager(obj: Obj) -> bool:
    """True for an object of one of cert-manager's kinds."""
    return str(obj.get("apiVersion", "")).startswith("cert-manager.io/")


def check(obj: Obj) -> list[str]:
    """What is wrong with a cert-manager object (empty when nothing): schema errors, then durations."""
    schema = SCHEMAS.get(obj.get("kind", ""))
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if schema is None or obj.get("apiVersion") != API_VERSION:
        return [f"{where}: {obj.get('apiVersion')} {obj.get('kind')} is not one the manifests may use"]
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{where}: {'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
              for error in sorted(validator.iter_errors(obj), key=lambda error: list(error.absolute_path))]
    if errors or obj["kind"] != "Certificate":
        return errors
    spec = obj["spec"]
    try:
        duration = go_duration_seconds(spec.get("duration", "2160h"))  # cert-manager's default: 90 days
        renew = go_duration_seconds(spec["renewBefore"]) if "renewBefore" in spec else duration / 3
    except ValueError as exc:
        return [f"{where}: {exc}"]
    if duration < 3600:
        errors.append(f"{where}: duration is under cert-manager's minimum of 1h")
    if not 300 <= renew < duration:
        errors.append(f"{where}: renewBefore must be at least 5m and shorter than the duration")
    return errors


def certificate_secrets(objects: tuple[Obj, ...] | list[Obj]) -> tuple[Obj, ...]:
    """The Secrets cert-manager will make for the Certificates among ``objects`` (keys only, no values)."""
    return tuple({"apiVersion": "v1", "kind": "Secret",
                  "metadata": {"name": obj["spec"]["secretName"], "namespace": obj["metadata"].get("namespace")},
                  "data": dict.fromkeys(SECRET_KEYS, "")}
                 for obj in objects if obj.get("kind") == "Certificate" and is_cert_manager(obj))
