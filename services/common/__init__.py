"""Code shared by every facegen service: settings, logging, errors, server and channels."""
