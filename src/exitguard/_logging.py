"""Delivery of native log messages into :mod:`logging` (used by src/log_forwarder.c).

The C forwarder calls :func:`deliver` attached to the main interpreter, once per
batch.  Records keep the native thread's name and id and the time the message was
logged.  Importing this module wraps ``logging.Logger.manager._clear_cache`` -- which
``setLevel``, ``logging.disable`` and ``dictConfig`` all call -- so that exitguard's
cached logger levels follow the configuration.
"""

import logging

from . import _core

_NATIVE_FILE = "(native)"


def threshold(name):
    """The lowest level a message to logger `name` needs to be delivered."""
    logger = logging.getLogger(name) if name else logging.getLogger()
    if logger.disabled:
        return 1 << 30
    return max(logger.getEffectiveLevel(), logging.root.manager.disable + 1)


def deliver(batch, dropped):
    """Hand a batch of (name, level, msg, tid, created, thread_name) to logging."""
    for name, level, msg, tid, created, thread_name in batch:
        logger = logging.getLogger(name) if name else logging.getLogger()
        if not logger.isEnabledFor(level):
            continue
        record = logger.makeRecord(logger.name, level, _NATIVE_FILE, 0, msg, None, None)
        record.created = created
        record.msecs = (created - int(created)) * 1000.0
        record.relativeCreated = (created - logging._startTime) * 1000.0
        record.thread = tid
        record.threadName = thread_name
        logger.handle(record)
    if dropped:
        logging.getLogger("exitguard").warning(
            "%d log message(s) from native threads were dropped: the ring of %d slots was full",
            dropped,
            _core._log_ring_size(),
        )
    _core._log_levels_changed(threshold, True)


def _install():
    manager = logging.Logger.manager
    original = manager._clear_cache

    if getattr(original, "_exitguard_hook", False):
        return

    def _clear_cache():
        original()
        _core._log_levels_changed(threshold, False)

    _clear_cache._exitguard_hook = True
    manager._clear_cache = _clear_cache


_install()
