"""The restore drill's child process: `python -m litefs_py.replication.drill_process`
(started by RestoreDrill; see replication/drill.py). A module of its own so that drill.py is
never run as `__main__` beside its imported copy."""

import sys

from .drill import child_main

sys.exit(child_main())
