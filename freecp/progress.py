"""How the library reports progress: a callback, so that only the commands draw bars.

``on_progress(what, done, total)``: ``what`` names the step (e.g. "encoding class names"),
``done`` of ``total`` units are finished. Flows and the Python API pass none.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[str, int, int], None]
