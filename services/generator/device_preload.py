"""What every device process needs, imported once by the fork server the children start from.

diffusers and transformers import a pipeline's modules on first use; resolving
the catalog's pipeline classes here means a new device process starts with
them imported instead of spending seconds on it (this module is named in
``set_forkserver_preload`` and imported nowhere else).

The fork server logs like the service (the libraries warn while their modules
are imported): it starts from the generator's environment, whose settings the
generator has already read and checked. A generator built from settings given
in code (tests) may run in an environment that does not hold them: its fork
server logs with the defaults.
"""

from __future__ import annotations

import contextlib

from services.common import logs
from services.common.config import ConfigError
from services.common.errors import Unavailable
from services.generator.pipelines import PIPELINE_CLASSES, pipeline_class, quiet_libraries
from services.generator.settings import Settings

try:
    _settings = Settings.from_env()
    logs.configure("generator", _settings.log_level, _settings.log_format)
except ConfigError:
    logs.configure("generator")
quiet_libraries()

for _family in PIPELINE_CLASSES:
    # A family this diffusers lacks fails later, at load, with the same clear error.
    with contextlib.suppress(Unavailable):
        pipeline_class(_family)
