import pytest

from loopgolf.eval.events import EventLog, merge_logs, merge_ranges


def test_merge_ranges():
    assert merge_ranges([(5, 7), (1, 3), (3, 4), (6, 9), (10, 10)]) == [(1, 4), (5, 9)]


def test_log_versions_merge_and_round_trip(tmp_path):
    log = EventLog("p", n_tokens=10)
    log.score([(1, 3)])
    log.score([(3, 5)])  # same version: merged into one event
    log.update([(0, 5)])
    log.score([(5, 10)])
    assert [e["kind"] for e in log.events] == ["score", "update", "score"]
    assert log.events[0]["ranges"] == [[1, 5]] and log.events[2]["version"] == 1
    back = EventLog.read(log.write(tmp_path / "ev.json"))
    assert back.to_dict() == log.to_dict()


def test_merge_orders_by_version_scores_first():
    a, b = EventLog("p", 10, rank=0), EventLog("p", 10, rank=1)
    a.score([(1, 5)]); b.score([(5, 10)])
    a.update([(0, 5)]); b.update([(5, 10)])
    m = merge_logs([a, b])
    assert [(e["kind"], e["version"]) for e in m.events] == [("score", 0), ("score", 0), ("update", 0), ("update", 0)]
    with pytest.raises(ValueError, match="different phases"):
        merge_logs([a, EventLog("q", 10)])


def test_bad_file_names_itself(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"phase": "x"}')
    with pytest.raises(ValueError, match="bad.json"):
        EventLog.read(p)


def test_ranges_must_be_integer_pairs():
    bad = {"phase": "x", "n_tokens": 5, "version": 0,
           "events": [{"kind": "score", "version": 0, "rank": 0, "ranges": [[1, 2, 3]]}]}
    with pytest.raises(ValueError, match="integer pairs"):
        EventLog.from_dict(bad, "crafted.json")


def test_updates_carry_their_scope_and_overlaps_stay_visible():
    log = EventLog("p", 10)
    log.score([(1, 4), (3, 6)])  # overlapping: kept apart so the checker sees the double score
    log.update([(0, 4)], scope="local")
    log.step_without_update()
    assert log.events[0]["ranges"] == [[1, 4], [3, 6]]
    assert [e.get("scope") for e in log.events] == [None, "local", "global"] and log.version == 2
    with pytest.raises(ValueError, match="scope"):
        log.update([], scope="rank")
