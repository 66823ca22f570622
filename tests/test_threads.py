"""The CPU thread policy: counts follow the cores other processes leave free; explicit counts are kept."""
import pytest

from utils.training.threads import ThreadPolicy, read_cpu_times


class FakeMachine:
    """A machine of ``cpus`` cores where other processes use ``others`` cores and we use ``ours``."""

    def __init__(self, others=0.0, ours=2.0):
        self.t, self.busy, self.own, self.others, self.ours = 0.0, 0.0, 0.0, others, ours
        self.set = []

    def advance(self, seconds):
        self.t += seconds
        self.busy += (self.others + self.ours) * seconds
        self.own += self.ours * seconds

    def reader(self):
        return self.busy, self.own

    def clock(self):
        self.advance(0.1)  # every look at the clock lets a little time pass (like the probe's sleep)
        return self.t


def _policy(machine, **kw):
    kw.setdefault("interval", 1.0)
    return ThreadPolicy.start(reader=machine.reader, clock=machine.clock, setter=machine.set.append, cpus=2,
                              probe=0.0, **kw)


@pytest.fixture(autouse=True)
def _no_omp_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_idle_machine_uses_every_core_and_our_own_threads_do_not_count():
    m = FakeMachine(others=0.05, ours=2.0)
    p = _policy(m)
    assert p.threads == 2 and m.set == [2]
    for _ in range(10):
        m.advance(1.0)
        assert p.update() is None
    assert p.threads == 2


def test_one_busy_process_takes_one_core_from_the_start():
    m = FakeMachine(others=1.0, ours=1.0)
    p = _policy(m)
    assert p.threads == 1 and m.set == [1] and "1 of 2" in p.describe()


def test_follows_a_competitor_that_comes_and_goes_after_two_agreeing_readings():
    m = FakeMachine(others=0.0)
    p = _policy(m)
    assert p.threads == 2
    m.others = 0.7  # a competitor holds most of a core (it gets less than a full core while we spin)
    m.advance(1.0)
    assert p.update() is None  # one reading is not enough
    m.advance(1.0)
    assert p.update() == 1 and m.set[-1] == 1
    m.others = 0.1
    m.advance(1.0)
    assert p.update() is None
    m.advance(1.0)
    assert p.update() == 2 and p.threads == 2 and len(p.changes) == 2


def test_not_measured_again_before_the_interval():
    m = FakeMachine(others=0.0)
    p = _policy(m, interval=100.0)
    m.others = 2.0
    for _ in range(5):
        m.advance(1.0)
        assert p.update() is None
    assert p.threads == 2


def test_explicit_counts_are_kept(monkeypatch):
    m = FakeMachine(others=1.5)
    assert _policy(m, requested=2).threads == 2 and m.set == [2]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    p = _policy(FakeMachine(others=1.5))
    assert p.fixed and p.threads == 2 and "fixed" in p.describe()
    m.advance(10)
    assert p.update() is None


def test_processes_of_one_run_share_the_cpus_evenly():
    p = _policy(FakeMachine(others=1.0), world_size=2)
    assert p.fixed and p.threads == 1


def test_reads_this_machine():
    times = read_cpu_times()
    assert times is not None and times[0] > 0 and 0 < times[1] <= times[0] + 1
