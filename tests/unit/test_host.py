"""bench/host.py: a level's share of the host's CPU, and no number where /proc/stat cannot resolve one."""

from bench.host import CLOCK_TICKS, RESOLVABLE_ERRORS, host_busy_seconds, host_cpu


def test_busy_seconds_become_cores_and_milliseconds_per_request():
    level = host_cpu({"throughput": 1.0}, busy_seconds=6.0, wall_seconds=2.0, requests=1000, cores=16)
    assert level == {"throughput": 1.0, "host_busy_cores": 3.0, "host_cpu_ms_per_request": 6.0}


def test_a_level_shorter_than_the_ticks_can_resolve_gets_no_host_numbers():
    # Two cores: the total can be off by two ticks, so ten times that is the least it reports.
    least = RESOLVABLE_ERRORS * 2 / CLOCK_TICKS
    short = host_cpu({}, busy_seconds=0.99 * least, wall_seconds=0.01, requests=5, cores=2)
    assert short == {"host_busy_cores": None, "host_cpu_ms_per_request": None}
    enough = host_cpu({}, busy_seconds=least, wall_seconds=1.0, requests=5, cores=2)
    assert enough["host_cpu_ms_per_request"] == round(1e3 * least / 5, 3)


def test_the_host_counter_only_goes_up():
    first = host_busy_seconds()
    sum(i * i for i in range(200_000))
    assert host_busy_seconds() >= first > 0
