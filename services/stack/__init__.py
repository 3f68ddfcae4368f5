"""The local stack: every facegen service plus embedded S3 and RunPod, on loopback."""
