"""The capacity ledger: never more than the limit, under concurrent writers and across restarts."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nexttouch.catalog import Action, Catalog
from serving import capacity
from serving.decision_log import DecisionLog, Tx


def _limited(catalog: Catalog, name: str, limit: int) -> Action:
    a = catalog[name]
    assert a.capacity is not None
    return a.model_copy(update={"capacity": a.capacity.model_copy(update={"limit": limit})})


def test_concurrent_writers_never_exceed_the_limit_and_restarts_remember(catalog: Catalog, tmp_path: Path) -> None:
    call = _limited(catalog, "advisor_call", 7)
    db = tmp_path / "decisions.db"
    logs = [DecisionLog(db) for _ in range(3)]  # three connections, as three workers have

    def one(i: int) -> int:
        return logs[i % 3].run(lambda tx: capacity.take(tx, call, "2026-11-01", "region=north"))

    with ThreadPoolExecutor(12) as pool:
        granted = list(pool.map(one, range(60)))
    assert sum(granted) == 7
    assert logs[0].run(lambda tx: capacity.take(tx, call, "2026-11-01", "region=south", want=10)) == 7  # partial
    for log in logs:
        log.close()

    again = DecisionLog(db)  # a restart: the ledger is in the database
    assert again.run(lambda tx: capacity.used(tx, "advisor_call", "2026-11-01")) == {
        "region=north": 7,
        "region=south": 7,
    }
    assert again.run(lambda tx: capacity.take(tx, call, "2026-11-01", "region=north")) == 0
    assert again.run(lambda tx: capacity.take(tx, call, "2026-11-02", "region=north")) == 1  # a new day
    bigger = _limited(catalog, "advisor_call", 9)  # the brand raised the limit: 2 more today
    assert again.run(lambda tx: capacity.take(tx, bigger, "2026-11-01", "region=north", want=5)) == 2
    assert again.run(lambda tx: capacity.take(tx, _limited(catalog, "advisor_call", 0), "2026-11-03", "x")) == 0
    again.close()


def test_a_failing_operation_rolls_back_alone(catalog: Catalog, tmp_path: Path) -> None:
    call = _limited(catalog, "advisor_call", 5)
    log = DecisionLog(tmp_path / "decisions.db")

    def take_then_fail(tx: Tx) -> int:
        capacity.take(tx, call, "2026-11-01", "all", want=3)
        raise RuntimeError("decision could not be logged")

    failing = log.submit(take_then_fail)
    ok = log.submit(lambda tx: capacity.take(tx, call, "2026-11-01", "all", want=1))
    assert ok.result() == 1
    assert isinstance(failing.exception(), RuntimeError)
    assert log.run(lambda tx: capacity.used(tx, "advisor_call", "2026-11-01")) == {"all": 1}  # the 3 were rolled back
    log.close()
