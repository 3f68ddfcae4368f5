"""Code shared by every facegen service: settings, logging, errors, server and channels.

Keep this file free of imports: the face-swap worker imports ``image_limits`` from
this package in its own environment, where nothing else of it would import.
"""
