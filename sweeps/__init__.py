"""segsweep sweeps package."""

import trainer._env  # noqa: F401
