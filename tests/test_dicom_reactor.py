"""The two threads of every association wait for events instead of polling (network/reactor.py): an
idle association's loops turn a few times per `IDLE_CHECK`, not every millisecond, on the server
side and on dicomvault's own SCU side, and requests are still answered (many on one association).

The turns are counted, not timed: pynetdicom's association loop asks its DIMSE provider for a
message once per turn (`dimse.get_msg(block=False)`), its DUL loop checks the socket once per idle
turn (`dul._is_transport_event`). The bound allows two turns per `IDLE_CHECK` of the measured
window plus a margin; a 1 ms polling loop makes hundreds of turns in the same window, and a slow
machine can only lower the event-driven count (its waits end by timeout at the soonest)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO

from dicomvault.network.modalities import RemoteModality
from dicomvault.network.pdu import MAX_WAITING_MESSAGES
from dicomvault.network.reactor import IDLE_CHECK
from dicomvault.network.scu import ScuAssociation, control_contexts, scu_parameters
from tests.dicomnet import (
    AET,
    VERIFICATION,
    DicomNodeFactory,
    associate,
    dicom_node_fixture,  # noqa: F401  (the dicom_node fixture)
)

pytestmark = pytest.mark.timeout(60)

IDLE_WINDOW = 0.6  # seconds of idleness observed
MARGIN = 5


class Turns:
    """Counts the turns of one association's two loops (wrapping, not replacing, what they call)."""

    def __init__(self, assoc: Association) -> None:
        self.association = 0
        self.dul = 0
        dimse: Any = assoc.dimse
        dul: Any = assoc.dul
        get_msg = dimse.get_msg
        is_transport_event = dul._is_transport_event

        def counting_get_msg(block: bool = False) -> Any:
            if not block:
                self.association += 1
            return get_msg(block)

        def counting_is_transport_event() -> bool:
            self.dul += 1
            return bool(is_transport_event())

        dimse.get_msg = counting_get_msg
        dul._is_transport_event = counting_is_transport_event

    def during_idle(self, seconds: float) -> tuple[int, int, float]:
        """(association turns, DUL turns, measured window) while nothing happens."""
        first = (self.association, self.dul)
        start = time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - start
        return self.association - first[0], self.dul - first[1], window


def bound(window: float) -> float:
    return 2 * window / IDLE_CHECK + MARGIN


def served_association(requestor: Association) -> Association:
    """The server's side of `requestor`'s association, told apart by the requestor's port: an
    association of an earlier test in this process may still be winding down."""
    sock = requestor.dul.socket
    assert sock is not None and sock.socket is not None
    port = sock.socket.getsockname()[1]
    (served,) = [assoc for assoc in associations(acceptor=True) if assoc.requestor.port == port]
    return served


def associations(acceptor: bool) -> list[Association]:
    return [
        thread
        for thread in threading.enumerate()
        if isinstance(thread, Association) and thread.is_acceptor == acceptor and thread.is_established
    ]


def test_idle_server_association_does_not_poll(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    config = node.server.context.config
    # The requestor is dicomvault's own SCU (event-driven too): pynetdicom's own loop has a pause
    # race that can steal an answer under CPU load (see network/reactor.py), a client-side flake.
    params = scu_parameters(config, RemoteModality(AET, "127.0.0.1", node.port))
    with ScuAssociation(params, control_contexts()) as association:
        requestor = association.open()
        association.echo()
        served = served_association(requestor)
        turns = Turns(served)
        association_turns, dul_turns, window = turns.during_idle(IDLE_WINDOW)
        assert association_turns <= bound(window), (association_turns, window)
        assert dul_turns <= bound(window), (dul_turns, window)
        # Still answered at once, many times on the same association.
        for _ in range(50):
            association.echo()
        assert turns.association > association_turns  # (the counters are in the loops)
    # Released by the peer: the server's threads end.
    served.join(timeout=10)
    assert not served.is_alive() and not served.dul.is_alive()


def test_idle_scu_association_does_not_poll(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    config = node.server.context.config
    params = scu_parameters(config, RemoteModality(AET, "127.0.0.1", node.port))
    with ScuAssociation(params, control_contexts()) as association:
        requestor = association.open()
        association.echo()
        turns = Turns(requestor)
        association_turns, dul_turns, window = turns.during_idle(IDLE_WINDOW)
        assert association_turns <= bound(window), (association_turns, window)
        assert dul_turns <= bound(window), (dul_turns, window)
        for _ in range(20):
            association.echo()
    requestor.join(timeout=10)
    assert not requestor.is_alive() and not requestor.dul.is_alive()


def pause(assoc: Association) -> None:
    """pynetdicom's own pause of an association's loop (what its `send_c_*` do)."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)


def test_pipelined_requests_wait_without_spinning(dicom_node: DicomNodeFactory) -> None:
    """A peer sending requests without waiting for the answers: network/pdu.py stops reading while
    two messages wait for the association's thread (here held at pynetdicom's checkpoint); the
    socket stays readable, the DUL must wait rather than spin on it, and must resume reading once
    the messages are taken."""
    node = dicom_node()
    count = 40
    with associate(node.port) as assoc:
        assert assoc.is_established
        served = served_association(assoc)
        turns = Turns(served)
        context_id = assoc.accepted_contexts[0].context_id
        assert context_id is not None
        pause(served)
        pause(assoc)  # our own (pynetdicom) loop must leave the answers to us
        try:
            for message_id in range(1, count + 1):
                request = C_ECHO()
                request.MessageID = message_id
                request.AffectedSOPClassUID = VERIFICATION
                assoc.dimse.send_msg(request, context_id)
            while len(served.dimse.msg_queue.queue) < MAX_WAITING_MESSAGES:
                time.sleep(0.01)  # (the module's timeout bounds this)
            _, dul_turns, window = turns.during_idle(IDLE_WINDOW)
            assert dul_turns <= bound(window), (dul_turns, window)
            served._reactor_checkpoint.set()
            answered: list[tuple[int, int]] = []
            for _ in range(count):
                _, response = assoc.dimse.get_msg(block=True)
                assert response is not None
                answered_id, status = response.MessageIDBeingRespondedTo, response.Status
                assert answered_id is not None and status is not None
                answered.append((int(answered_id), int(status)))
        finally:
            served._reactor_checkpoint.set()
            assoc._reactor_checkpoint.set()
        assert answered == [(message_id, 0) for message_id in range(1, count + 1)]
