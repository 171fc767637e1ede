"""InputPositions: a provider client's count of caller frames -> the input entry of the last."""

from __future__ import annotations

from worker.session import MAX_POSITIONS, InputPositions


def test_a_count_maps_to_the_entry_of_its_last_frame() -> None:
    positions = InputPositions("5-0")  # this owner read after 5-0
    for ms in range(6, 11):
        positions.fed(f"{ms}-0")
    assert positions.entry(0) == "5-0"  # no frame of this client in the state yet
    assert positions.entry(2) == "7-0"
    assert positions.entry(2) == "7-0"  # idempotent
    assert positions.entry(5) == "10-0"
    assert positions.entry(9) == "10-0"  # never past what the client was given


def test_memory_is_bounded_and_an_old_count_reads_from_the_oldest_known() -> None:
    positions = InputPositions("0-0")
    for n in range(1, MAX_POSITIONS + 11):
        positions.fed(f"{n}-0")
    assert positions.entry(3) == "10-0"  # frames 1..10 were forgotten
    assert positions.entry(MAX_POSITIONS + 10) == f"{MAX_POSITIONS + 10}-0"
