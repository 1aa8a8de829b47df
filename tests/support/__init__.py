"""Helpers the tests share: synthetic data, fabricated sweeps, a stand-in cross-validation, Ray and trackers."""

import signal

#: SIGINT's handler when the test session started (Python's default in a terminal; ignored in a
#: background job or a pytest-xdist worker): what every test must leave behind.
SIGINT_HANDLER_AT_START = signal.getsignal(signal.SIGINT)
