"""pytest set-up for executing the chapters with nbval.

Chapters run with the quick budget unless the caller set VIT_QUICK (e.g. VIT_QUICK=0 for the full one).
The kernel inherits these variables.
"""

import os

os.environ.setdefault("VIT_QUICK", "1")
os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
