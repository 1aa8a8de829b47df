"""segsweep search_spaces package."""

import trainer._env  # noqa: F401
