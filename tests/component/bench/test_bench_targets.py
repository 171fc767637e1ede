"""The sweep's pieces that need no Redis: issue 9's targets per load, and ``--sweep`` parsing."""

from __future__ import annotations

import pytest

from bench import sweep
from bench.runtime import Targets


@pytest.mark.parametrize(
    ("sessions", "level", "worker", "distributed", "p99"),
    [
        (1, 20, 1.6, 2.0, None),
        (50, 50, 1.6, 2.0, 15.0),
        (150, 100, 1.3, 1.5, 15.0),
        (200, 200, 1.3, 1.5, 30.0),
        (500, 200, 1.3, 1.5, 30.0),
    ],
)
def test_targets_per_load(
    sessions: int, level: int, worker: float, distributed: float, p99: float | None
) -> None:
    targets = Targets.at(sessions)
    assert (targets.level, targets.worker_cpu_ratio) == (level, worker)
    assert (targets.distributed_cpu_ratio, targets.p99_added_ms) == (distributed, p99)
    assert (targets.redis_cores is not None) == (level == 50)
    assert (targets.redis_ms_per_session_s is not None) == (level == 200)


def test_parse_loads() -> None:
    assert sweep.parse_loads("200, 20,50") == [20, 50, 200]
    for bad in ("0", "20,20", "x"):
        with pytest.raises(ValueError):
            sweep.parse_loads(bad)


def _run(ratio: float | None, tag: str) -> dict[str, object]:
    keys = ("worker_to_client", "redis_ms", "added_in_p99_ms", "added_out_p99_ms")
    return {"tag": tag, "summary": {"distributed_to_client": ratio, **dict.fromkeys(keys, 1.0)}}


def test_repeated_runs_show_the_median_run_whole() -> None:
    runs = [_run(3.0, "slow"), _run(2.1, "fast"), _run(2.4, "middle")]
    chosen = sweep.median_run(runs)
    assert chosen["tag"] == "middle"
    assert [r["distributed_to_client"] for r in chosen["repeats"]] == [3.0, 2.1, 2.4]
    # an even count takes the lower middle; a run without the ratio ranks last
    assert sweep.median_run([_run(None, "broken"), _run(2.0, "a")])["tag"] == "a"
    assert "repeats" not in runs[0] and sweep.median_run([runs[0]]) is runs[0]


def test_repeat_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import __main__ as cli

    with pytest.raises(SystemExit):
        cli.main(["--repeat", "0"])
    assert "--repeat 0: expected 1 or more" in capsys.readouterr().err
