"""What every device process needs, imported once by the fork server the children start from.

diffusers and transformers import a pipeline's modules on first use; resolving
the catalog's pipeline classes here means a new device process starts with
them imported instead of spending seconds on it (this module is named in
``set_forkserver_preload`` and imported nowhere else).
"""

from __future__ import annotations

import contextlib

from services.common.errors import Unavailable
from services.generator.pipelines import PIPELINE_CLASSES, pipeline_class

for _family in PIPELINE_CLASSES:
    # A family this diffusers lacks fails later, at load, with the same clear error.
    with contextlib.suppress(Unavailable):
        pipeline_class(_family)
