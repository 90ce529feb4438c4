"""Host liveness is judged only over time the judge could hear the bus."""
import pytest

from services.scheduler.application.liveness import Liveness

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


def tick(live: Liveness, clock: Clock, seconds: float, ok: bool = True) -> None:
    """Let time pass with the probe answering every second, as it does."""
    while seconds > 0:
        step = min(1.0, seconds)
        clock.t += step
        seconds -= step
        live.flowing(ok)


def two_hosts_heard(clock: Clock, interval_s: float) -> Liveness:
    live = Liveness(3, clock)
    live.flowing(True)
    live.beat("h1", interval_s)
    live.beat("h2", interval_s)
    return live


def test_no_verdict_before_the_bus_is_known_to_flow(clock):
    live = Liveness(3, clock)
    live.beat("h1", 2.0)
    clock.t += 60
    assert live.expired() == []  # never probed: deaf, not silent
    assert live.flowing(True) is True
    assert live.expired() == []  # fresh grace from the flow's start
    tick(live, clock, 6.01)
    assert live.expired() == ["h1"]


def test_an_outage_gives_every_host_a_fresh_grace_period(clock):
    live = two_hosts_heard(clock, 2.0)
    tick(live, clock, 5)
    tick(live, clock, 30, ok=False)  # NATS gone for 30 s: nobody's heartbeat can arrive
    assert live.expired() == []
    assert live.flowing(True) is True  # back: the clock starts again for everyone
    assert live.flowing(True) is False  # (only once)
    tick(live, clock, 5.9)
    assert live.expired() == []
    live.beat("h1", 2.0)  # h1 resumed; h2 is really gone
    tick(live, clock, 0.2)
    assert live.expired() == ["h2"]


def test_a_dead_host_is_lost_within_its_timeout_of_a_healthy_bus(clock):
    live = two_hosts_heard(clock, 1.0)
    for _ in range(3):  # h1 keeps beating; h2 died
        tick(live, clock, 1.0)
        live.beat("h1", 1.0)
        assert live.expired() == []
    tick(live, clock, 0.01)
    assert live.expired() == ["h2"]
    assert live.timeout_for("h2") == 3.0
    assert "h2" not in live.alive() and "h1" in live.alive()


def test_expected_hosts_are_judged_from_start_but_not_placed_on(clock):
    """After a scheduler restart a registered host that never speaks again is
    still found lost; until it speaks nothing is placed on it."""
    live = Liveness(3, clock)
    live.expect("h1", 2.0)
    assert live.alive() == [] and live.age("h1") is None
    live.flowing(True)
    tick(live, clock, 6.5)
    assert live.expired() == ["h1"]
    live.beat("h1", 2.0)
    live.expect("h1", 2.0)  # expecting a heard host changes nothing
    assert live.alive() == ["h1"] and live.age("h1") == 0.0


def test_a_probe_that_stops_answering_is_no_verdict(clock):
    """The probe hangs (a request during a reconnect): its last word expires."""
    live = Liveness(3, clock, max_probe_age_s=2.5)
    live.flowing(True)
    live.beat("h1", 1.0)
    clock.t += 2.0
    live.flowing(True)
    clock.t += 3.0  # no probe since: h1 is silent for 5 s, but nobody can tell
    assert not live.is_flowing and live.expired() == []
    live.flowing(True)  # a verdict again, and the flow never stopped
    assert live.expired() == ["h1"]
