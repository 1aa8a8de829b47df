"""segsweep reports package."""

import trainer._env  # noqa: F401
