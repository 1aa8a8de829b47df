"""Helpers the tests share: synthetic data, fabricated sweeps, a stand-in cross-validation, Ray and trackers."""

import signal

#: SIGINT's handler when the test session started (Python's default in a terminal; ignored in a
#: background job or a pytest-xdist worker): what every test must leave behind.
SIGINT_HANDLER_AT_START = signal.getsignal(signal.SIGINT)

#: The encoder of tests that train a model but test nothing encoder-specific: VGG16 has the fewest
#: layers of the supported encoders, and on 64 px images a test's time is Keras tracing the training
#: graph (one op per layer and per Adam update), not computing it: a tiny `segsweep cv` takes ~40%
#: less time than with mobilenetv2. Tests of batch normalisation or of an encoder's weights name theirs.
TINY_ENCODER = "vgg16"


def checkpoint_every_epoch(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Tiny epochs last about a second: make every one of them write its checkpoint (normally one
    protects at least trainer.checkpoint.MIN_PROTECTED_SECONDS and costs at most MAX_OVERHEAD)."""
    monkeypatch.setattr("trainer.checkpoint.MIN_PROTECTED_SECONDS", 0.0)
    monkeypatch.setattr("trainer.checkpoint.MAX_OVERHEAD", float("inf"))
