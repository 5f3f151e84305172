"""Event-driven waiting for the two threads of a pynetdicom 3.0.x association (a per-association shim).

pynetdicom 3.0.4 runs two polling loops per association: the DUL reactor
(`DULServiceProvider.run_reactor`) sleeps 1 ms whenever it found nothing to do, then polls its
socket (`select` with timeout 0) and its queues; the association reactor
(`Association._run_reactor`) sleeps 1 ms on every turn before looking for a decoded DIMSE message,
a release or abort request, a dead DUL or an expired idle timer. Each association thus wakes
~2000 times a second while idle (a few % of a core each, and GIL churn that makes parallel
associations slower than one), and every DIMSE exchange pays several of those 1 ms sleeps.

`event_driven(assoc)` keeps pynetdicom's logic (state machine, decoding, events, checks) and
changes only how these two threads wait:

* the DUL thread blocks in `poll()` on its socket plus a wake-up pipe, at most `IDLE_CHECK`
  seconds (so the ARTIM timer is still checked). The pipe is written when another thread puts a
  primitive on `to_provider_queue` (something to send) or an event on `event_queue`, stops the
  DUL (`kill_dul`, `stop_dul`), or takes a DIMSE message off a queue that `network/pdu.py`'s
  backpressure had made stop reading (the socket is left out of the poll while reading is
  paused, or a readable socket would make the loop spin). The wait is hooked into
  `_process_recv_primitive`, the first thing the loop does after its (now zero) sleep, so it also
  works on a DUL whose thread already runs (the C-MOVE sub-association, seen at EVT_CONN_OPEN);
* the association thread runs a copy of `Association._run_reactor` whose 1 ms sleep is replaced
  by a wait on a `threading.Event` (at most `IDLE_CHECK` seconds, so the idle timer is still
  checked), set when the DUL queues a DIMSE message or an ACSE primitive, when the DUL stops and
  when the association is killed. While it waits it counts as paused (`_is_paused`): the loop
  passes `_reactor_checkpoint` before touching any queue, so `send_c_*` and `release()` on
  another thread need not wait for a turn of the loop. One fix to pynetdicom's logic comes with
  the copy: its pause handshake had a race that let the loop steal the answer a `send_c_*` waits
  for (a DIMSE timeout then an abort, seen under CPU load with pynetdicom's own loop too); the
  copy re-checks the checkpoint after leaving it.

Installed per association before its threads start (the DICOM server's request handler, the SCU
socket) or, for the DUL part only, on a running DUL; nothing global is patched, and it refuses to
install on a pynetdicom other than the one `network/pdu.py` was written for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import pynetdicom
from pynetdicom import evt
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE

from dicomvault.network.pdu import MAX_WAITING_MESSAGES, SUPPORTED_PYNETDICOM, reading_paused

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

logger = logging.getLogger(__name__)
# pynetdicom's association logger: the copied loop logs what the original logs, where it logs it.
_ASSOCIATION_LOG = logging.getLogger("pynetdicom.association")

# The longest either thread waits before re-checking its timers (ARTIM, network idle timeout).
IDLE_CHECK = 0.05
_MARKER = "_dicomvault_event_driven"
_POLL_IN = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


class Waker:
    """A pipe that interrupts one thread's `poll()`; at most one byte in flight (`pending`)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._lock = threading.Lock()
        self._pending = False
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        with self._lock:
            # Under the lock: a closed descriptor's number may already belong to another file.
            if self._closed or self._pending:
                return
            self._pending = True
            with contextlib.suppress(BlockingIOError):  # (cannot happen with one byte in flight)
                os.write(self._write, b"\0")

    def drain(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._pending = False
            with contextlib.suppress(BlockingIOError):
                os.read(self._read, 64)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._read)
            os.close(self._write)


class Wakeups:
    """How many times each thread of one association woke from a wait (for tests and benchmarks)."""

    def __init__(self) -> None:
        self.dul = 0
        self.association = 0


def _after_put(target: queue.Queue[Any], hook: Callable[[], None]) -> None:
    put = target.put

    def waking_put(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        hook()

    target.put = waking_put  # type: ignore[method-assign]


class _DulWait:
    """The DUL side: wait in `poll()` instead of sleeping 1 ms, then run pynetdicom's own step."""

    def __init__(self, dul: DULServiceProvider, waker: Waker, activity: threading.Event, counts: Wakeups) -> None:
        self._dul = dul
        self._waker = waker
        self._activity = activity
        self._counts = counts
        self._process_recv_primitive = dul._process_recv_primitive

    def process_recv_primitive(self) -> bool:
        """Replacement of `DULServiceProvider._process_recv_primitive`: wait, then the original."""
        self._wait()
        return self._process_recv_primitive()

    def _wait(self) -> None:
        dul = self._dul
        if self._waker.closed:
            time.sleep(0.001)  # (never expected: the DUL outlived its association) pynetdicom's pace
            return
        if dul._kill_thread or dul.event_queue.qsize() or dul.to_provider_queue.qsize():
            return
        if dul.state_machine.current_state == "Sta13" or dul.artim_timer.expired:
            time.sleep(0.001)  # pynetdicom's pace while it closes the connection or times out
            return
        poller = select.poll()
        poller.register(self._waker.fileno, _POLL_IN)
        association_socket = dul.socket
        raw = association_socket.socket if association_socket is not None else None
        if raw is not None and association_socket is not None and association_socket._is_connected:
            if isinstance(raw, ssl.SSLSocket) and raw.pending():
                return  # decrypted bytes already buffered: poll() cannot see them
            descriptor = raw.fileno()
            if descriptor >= 0 and not reading_paused(dul):
                poller.register(descriptor, _POLL_IN)
        poller.poll(IDLE_CHECK * 1000)
        self._waker.drain()
        self._counts.dul += 1

    def wake_from(self, other_threads_only: bool) -> Callable[[], None]:
        waker, dul = self._waker, self._dul

        def wake() -> None:
            if not other_threads_only or threading.get_ident() != dul.ident:
                waker.wake()

        return wake

    def kill_dul(self) -> None:
        """Replacement of `DULServiceProvider.kill_dul`: also wakes both threads."""
        self._dul._kill_thread = True
        self._waker.wake()
        self._activity.set()

    def stop_dul(self) -> bool:
        """Replacement of `DULServiceProvider.stop_dul` (same contract), waking the DUL."""
        dul = self._dul
        if dul.state_machine.current_state != "Sta1":
            return False
        dul._kill_thread = True
        self._waker.wake()
        while dul.is_alive():
            time.sleep(0.001)
        return True


def _wants_association(assoc: Association) -> bool:
    """True when the head of `to_user_queue` is what the association reactor acts on."""
    try:
        primitive = assoc.dul.to_user_queue.queue[0]
    except IndexError:
        return False
    if isinstance(primitive, A_RELEASE):
        return primitive.result is None and assoc.is_established
    return isinstance(primitive, (A_ABORT, A_P_ABORT))


def _association_reactor(assoc: Association, activity: threading.Event, counts: Wakeups) -> None:
    """pynetdicom 3.0.4's `Association._run_reactor`, its `time.sleep(0.001)` replaced by a wait."""
    dimse_queue = assoc.dimse.msg_queue
    assoc._is_paused = False
    while not assoc._kill:
        activity.clear()  # before the checks: a later set() interrupts the wait
        if not (
            assoc._kill
            or dimse_queue.qsize()
            or _wants_association(assoc)
            or not assoc.dul.is_alive()
            or assoc.dul.idle_timer_expired()
        ):
            # Waiting counts as paused: the loop passes `_reactor_checkpoint` before any queue.
            assoc._is_paused = True
            activity.wait(IDLE_CHECK)
            counts.association += 1

        # pynetdicom's pause, closing its race: `send_c_*` clears the checkpoint then waits for
        # `_is_paused`; when it clears it again just after this thread left `wait()` (woken by the
        # previous exchange's `set()`), it still sees `_is_paused` and both threads would take the
        # next message off the queue (the answer gets "unexpected", the caller a DIMSE timeout:
        # seen under load with pynetdicom's own loop). Re-checking after clearing `_is_paused` closes it.
        while True:
            assoc._is_paused = True
            assoc._reactor_checkpoint.wait()
            assoc._is_paused = False
            if assoc._reactor_checkpoint.is_set():
                break

        # From here on, pynetdicom's loop body unchanged.

        context_id, msg = assoc.dimse.get_msg(block=False)
        if msg:
            assoc._serve_request(msg, cast(int, context_id))

        if assoc.is_established and assoc.acse.is_release_requested():
            assoc.acse.send_release(is_response=True)
            _ASSOCIATION_LOG.info("Association Released")
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.kill()
            return

        if assoc.acse.is_aborted():
            log_msg = "Association Aborted"
            if assoc.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            _ASSOCIATION_LOG.info(log_msg)
            assoc.dul.receive_pdu(wait=False)
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return

        if not assoc.dul.is_alive():
            assoc.kill()
            return

        if assoc.dul.idle_timer_expired():
            _ASSOCIATION_LOG.error("Network timeout reached")
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return


def event_driven(assoc: Association) -> Wakeups:
    """Make both threads of `assoc` wait for events instead of polling (idempotent).

    Call before `assoc.start()` for both threads; on an association whose threads already run,
    the DUL part still applies and the association part applies if its reactor loop has not
    started yet (an association still negotiating)."""
    existing = getattr(assoc, _MARKER, None)
    if isinstance(existing, Wakeups):
        return existing
    if not pynetdicom.__version__.startswith(SUPPORTED_PYNETDICOM):
        raise RuntimeError(
            f"network/reactor.py copies pynetdicom {SUPPORTED_PYNETDICOM}x's reactor loops, not pynetdicom "
            f"{pynetdicom.__version__}: compare Association._run_reactor and DULServiceProvider.run_reactor"
        )
    counts = Wakeups()
    dul = assoc.dul
    waker = Waker()
    activity = threading.Event()
    dul_wait = _DulWait(dul, waker, activity, counts)

    # DUL: pynetdicom's loop keeps running; only its idle sleep becomes the poll() above.
    dul._run_loop_delay = 0
    dul._process_recv_primitive = dul_wait.process_recv_primitive  # type: ignore[method-assign]
    dul.kill_dul = dul_wait.kill_dul  # type: ignore[method-assign]
    dul.stop_dul = dul_wait.stop_dul  # type: ignore[method-assign]
    _after_put(dul.to_provider_queue, dul_wait.wake_from(other_threads_only=False))
    _after_put(dul.event_queue, dul_wait.wake_from(other_threads_only=True))
    weakref.finalize(dul, waker.close)  # backstop; normally closed when the DUL thread ends
    if dul.ident is None:  # not started: close the pipe (and tell the association) at its end
        run = dul.run

        def run_then_close() -> None:
            try:
                run()
            finally:
                waker.close()
                activity.set()

        dul.run = run_then_close  # type: ignore[method-assign]

    # Association: woken by what the DUL hands it, and by the DUL's reading resuming.
    dimse_queue = assoc.dimse.msg_queue
    _after_put(dimse_queue, activity.set)
    _after_put(dul.to_user_queue, activity.set)
    get = dimse_queue.get

    def get_then_resume(block: bool = True, timeout: float | None = None) -> Any:
        item = get(block, timeout)
        if len(dimse_queue.queue) + 1 >= MAX_WAITING_MESSAGES:
            waker.wake()  # the bounded reader may have paused reading: it can resume now
        return item

    dimse_queue.get = get_then_resume  # type: ignore[method-assign]
    kill = assoc.kill

    def kill_and_wake() -> None:
        assoc._kill = True  # (pynetdicom's kill sets it too) seen by the reactor woken just below
        activity.set()
        kill()
        if not dul.is_alive():  # pynetdicom's kill returns once the DUL thread has ended
            waker.close()

    assoc.kill = kill_and_wake  # type: ignore[method-assign]
    assoc._run_reactor = lambda: _association_reactor(assoc, activity, counts)  # type: ignore[method-assign]
    setattr(assoc, _MARKER, counts)
    return counts
