"""The local stack: every facegen service plus an S3 server and RunPod's queue API, on loopback.

Local tooling only (the ``local`` extra: moto, the sample photos' packages, the emulator's
web framework); no service imports it and no service image holds it.
"""
