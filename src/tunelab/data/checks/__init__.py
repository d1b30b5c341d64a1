"""The doctor's checks, one module per family; each registers its checks in `tunelab.data.findings` on import.

This is the one place the check modules are listed, and their order here is the order the checks run
(and appear in reports): keep it stable, and add a new module where its checks should run. Check modules
import `tunelab.data.findings` (and other data helpers), never `tunelab.data.doctor` or each other for
registration.
"""

from tunelab.data.checks import basic, chat, dedup, images, text, labels, pii  # noqa: F401  # isort: skip
