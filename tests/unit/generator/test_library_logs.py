"""The Hugging Face libraries' own log lines come out in the service's format, not past it.

diffusers, transformers and huggingface_hub each give their logger a stderr handler of their
own (and the first two stop propagation), so with LOG_FORMAT=json a warning of theirs (e.g.
transformers' "requires torchvision" at every model load) was a plain text line in a JSON log,
unescaped and unfiltered.
"""

from __future__ import annotations

import json
import logging

import pytest

from services.common import logs
from services.generator.pipelines import quiet_libraries

pytestmark = pytest.mark.unit

LIBRARIES = ("diffusers", "transformers", "huggingface_hub")


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
                 for name in LIBRARIES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (own, propagate) in libraries.items():
        logging.getLogger(name).handlers[:] = own
        logging.getLogger(name).propagate = propagate


def test_library_warnings_are_json_lines_of_the_service_once_each(capsys) -> None:
    import diffusers.utils.logging
    import huggingface_hub.utils.logging
    import transformers.utils.logging

    # The libraries' state as they leave it on import (CI=1 would make transformers propagate).
    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.enable_default_handler()
        library.disable_propagation()
    logs.configure("generator", "INFO", "json")
    quiet_libraries()

    transformers.utils.logging.get_logger("transformers.image_processing").warning("requires torchvision\x1b[2J")
    diffusers.utils.logging.get_logger("diffusers.pipelines").warning("a diffusers warning")
    huggingface_hub.utils.logging.get_logger("huggingface_hub.file_download").warning("a hub warning")

    captured = capsys.readouterr()
    assert captured.err == "", "nothing on the libraries' own stderr handlers"
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [(line["service"], line["level"], line["event"], line["message"]) for line in lines] == [
        ("generator", "warning", "log", "requires torchvision\x1b[2J"),
        ("generator", "warning", "log", "a diffusers warning"),
        ("generator", "warning", "log", "a hub warning"),
    ]
    assert "\x1b" not in captured.out, "escaped like every line"
