"""``python -m bench --lingers``: lingers parsed and refused with the bad value named, the median
per linger, and a tiny real run (two lingers, two rounds) that writes the JSON and the table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import __main__ as cli
from bench import lingers


def test_lingers_parse_in_the_order_given() -> None:
    assert lingers.parse_lingers("5, 2,10") == [5.0, 2.0, 10.0]
    assert lingers.parse_lingers("0,2.5") == [0.0, 2.5]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("5,x", "'x' is not a number"),
        ("5,51", "51 ms: expected 0-50 ms"),
        ("-1,5", "-1 ms"),
        ("5,5", "appears twice"),
        ("5", "at least two"),
    ],
)
def test_bad_lingers_are_refused_naming_the_value(text: str, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        lingers.parse_lingers(text)


def test_the_cli_refuses_lingers_with_another_mode(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--sweep", "20,50"], ["--shards", "3"], ["--quick"], ["--replicas", "1"]):
        with pytest.raises(SystemExit):
            cli.main(["--lingers", "2,5", *extra])
        assert "--lingers runs one load" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--lingers", "2,abc"])
    assert "--lingers 2,abc: 'abc' is not a number" in capsys.readouterr().err


def test_the_linger_environment_is_set_for_the_run_and_restored() -> None:
    name = "VOICEGRID_BATCH_LINGER_MS"
    before = os.environ.get(name)
    with lingers._linger_env(7.5):
        assert os.environ[name] == "7.5"
    assert os.environ.get(name) == before


def _summary(value: float | None, errors: int = 0) -> dict[str, object]:
    summary: dict[str, object] = {key: value for key, _, _ in lingers.ROWS}
    summary["errors"] = errors
    return summary


def test_summarize_takes_each_number_s_median_and_adds_the_errors() -> None:
    runs = [{"summary": _summary(v, errors=e)} for v, e in ((3.0, 0), (1.0, 2), (2.0, 1))]
    medians = lingers.summarize(runs)
    assert medians["worker_ms"] == 2.0
    assert medians["added_in_p99_ms"] == 2.0
    assert medians["errors"] == 3
    # a number one round lacks (no latency sample) is the median of the others
    runs.append({"summary": _summary(None)})
    assert lingers.summarize(runs)["redis_ms"] == 2.0
    assert lingers.summarize([{"summary": _summary(None)}])["redis_ms"] is None


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_tiny_lingers_run_writes_the_medians_and_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lingers.json"
    argv = ["--lingers", "0,5", "--sessions", "2", "--seconds", "1", "--repeat", "2"]
    assert cli.main([*argv, "--out", str(out)]) == 0

    result = json.loads(out.read_text())["lingers"]
    assert result["lingers_ms"] == [0.0, 5.0]
    assert [p["linger_ms"] for p in result["per_linger"]] == [0.0, 5.0]
    for per in result["per_linger"]:
        assert len(per["rounds"]) == 2
        median = per["median"]
        assert median["errors"] == 0
        for key in ("worker_ms", "redis_ms", "in_process_client_ms", "distributed_to_client"):
            assert median[key] > 0, key
        assert median["added_in_p99_ms"] is not None
        # each run is judged against issue 9's targets at its load (20's below 20)
        assert all(t["level"] == 20 for t in per["targets"])
    assert result["fit"] is None  # one nonzero linger: nothing to fit

    printed = capsys.readouterr().out
    # the order rotates: round 2 starts with the second linger
    assert printed.index("round 2/2: linger 5 ms") < printed.index("round 2/2: linger 0 ms")
    assert "linger 0 ms" in printed.split("lingers:", 1)[1]
    assert "caller->provider p99 ms" in printed


def _linger(ms: float, values: list[float]) -> dict[str, object]:
    return {"linger_ms": ms, "rounds": [_summary(v) for v in values]}


def test_the_fit_splits_a_cost_into_per_frame_and_per_round() -> None:
    # cost = 2 + 10 / linger exactly, with the zero linger (no rounds per linger) left out
    per = [_linger(0.0, [99.0]), _linger(5.0, [4.0, 4.0]), _linger(10.0, [3.0]), _linger(20, [2.5])]
    fit = lingers.fit_rounds(per)
    assert fit is not None
    assert fit["worker_ms"]["per_frame"] == pytest.approx(2.0)
    assert fit["worker_ms"]["per_round"] == pytest.approx(10.0)
    assert fit["worker_ms"]["points"] == 4
    # noisy rounds: the least-squares line through all of them
    noisy = lingers.fit_rounds([_linger(5.0, [3.9, 4.1]), _linger(10.0, [2.9, 3.1])])
    assert noisy is not None
    assert noisy["redis_ms"]["per_frame"] == pytest.approx(2.0)


def test_no_fit_without_two_nonzero_lingers() -> None:
    assert lingers.fit_rounds([_linger(0.0, [5.0]), _linger(5.0, [3.0, 3.2])]) is None
    assert lingers.fit_rounds([_linger(5.0, [None]), _linger(10.0, [3.0])]) is None  # type: ignore[list-item]


def test_the_table_shows_the_split_per_linger(capsys: pytest.CaptureFixture[str]) -> None:
    per = [_linger(5.0, [4.0]), _linger(10.0, [3.0])]
    for entry in per:
        entry["median"] = {**entry["rounds"][0]}  # type: ignore[index]
    result = {
        "sessions": 50,
        "seconds": 10,
        "repeat": 1,
        "redis": "redis://127.0.0.1:6379/0",
        "cpu_count": 2,
        "per_linger": per,
        "fit": lingers.fit_rounds(per),
    }
    lingers.print_table(result)
    split = capsys.readouterr().out.split("cost = per frame + per round / linger", 1)[1]
    row = next(line for line in split.splitlines() if "worker CPU ms/session-s" in line)
    # per frame 2.00; per round 10 ms·ms: 2.00 at 5 ms, 1.00 at 10 ms
    assert row.split()[-3:] == ["2.00", "2.00", "1.00"]
