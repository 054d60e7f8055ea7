"""nexttouch.partitions.run: the embedded engine runs a step's partitions a few at a time, in order."""

from __future__ import annotations

import threading
import time

import pytest

from nexttouch.partitions import partition_count, run
from nexttouch.settings import load_settings


def _settings(tmp_path, **values):
    return load_settings(project_dir=tmp_path, **values)


def test_partitions_run_a_few_at_a_time_and_come_back_in_order(tmp_path) -> None:
    lock, running, most = threading.Lock(), [0], [0]

    def step(k: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05 + 0.02 * (k % 3))  # all overlap; later tasks finish first, some of the time
        with lock:
            running[0] -= 1
        return k * k

    for workers in (1, 2, 3):
        most[0] = 0
        settings = _settings(tmp_path, data_workers=workers)
        assert list(run(settings, step, [(k,) for k in range(12)])) == [k * k for k in range(12)]
        assert most[0] == workers


def test_a_failing_partition_stops_the_step_and_starts_no_more(tmp_path) -> None:
    started = []

    def step(k: int) -> int:
        started.append(k)
        if k == 2:
            raise ValueError("partition 2 is broken")
        time.sleep(0.05)
        return k

    results = run(_settings(tmp_path, data_workers=2), step, [(k,) for k in range(20)])
    with pytest.raises(ValueError, match="partition 2"):
        list(results)
    assert max(started) <= 4  # the tasks in flight when it failed, no more


def test_the_budget_is_shared_by_the_partitions_run_at_once(tmp_path) -> None:
    gib = 2**30
    assert partition_count(10 * gib, _settings(tmp_path, data_memory_gib=4, data_workers=1)) == 3
    assert partition_count(10 * gib, _settings(tmp_path, data_memory_gib=4, data_workers=2)) == 5
    on_cluster = _settings(tmp_path, data_memory_gib=4, data_workers=2, dask_scheduler="tcp://127.0.0.1:8786")
    assert partition_count(10 * gib, on_cluster) == 3  # one at a time on each worker


def test_a_file_split_by_several_threads_keeps_its_rows_in_order_in_each_partition(tmp_path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    from nexttouch.parquet import small_dictionaries
    from nexttouch.partitions import read_partition, split

    n = 50_000
    rows = pa.table({"key": pc.cast(pa.array(np.arange(n) % 997), pa.string()), "at": np.arange(n)})
    path = tmp_path / "rows.parquet"
    pq.write_table(rows, path, row_group_size=3_000)  # 17 row groups
    by_one = split([path], ["key"], 5, tmp_path / "one", 1.0)
    by_three = split([path], ["key"], 5, tmp_path / "three", 1.0, workers=3)
    assert sum(len(files) for files in by_three) > sum(len(files) for files in by_one)  # each thread its files
    for one, three in zip(by_one, by_three, strict=True):
        want, got = read_partition(one, rows.schema), read_partition(three, rows.schema)
        assert got.equals(want) and pc.all(pc.greater(got["at"][1:], got["at"][:-1])).as_py()
    assert sum(read_partition(files, rows.schema).num_rows for files in by_three) == n
    # The key, a few hundred values, is read as a dictionary and reordered as codes: it is stored as text.
    assert small_dictionaries(path, ["key", "at"]) == ["key"]
    assert ipc.open_file(by_three[0][0]).schema.field("key").type == pa.string()


def test_an_id_and_the_same_id_with_blanks_around_it_meet_in_one_partition(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nexttouch.partitions import read_partition, split

    ids = [f"e{i}" for i in range(200)]
    clean, blank = tmp_path / "clean.parquet", tmp_path / "blank.parquet"
    pq.write_table(pa.table({"id": ids}), clean)  # read in batches without a blank: hashed as they are
    padded = [f" {i}" if n % 3 == 0 else f"{i}\t" if n % 3 == 1 else f"\r\n{i} \f" for n, i in enumerate(ids)]
    pq.write_table(pa.table({"id": [*padded, "\u3000e1", "e2\x0b"]}), blank)  # trimmed: only RE2's \s
    where: dict[str, set[int]] = {}
    for k, files in enumerate(split([clean, blank], ["id"], 7, tmp_path / "parts", 1.0)):
        for value in read_partition(files, pa.schema([("id", pa.string())]))["id"].to_pylist():
            where.setdefault(value.strip(" \t\n\f\r"), set()).add(k)
    assert all(len(where[i]) == 1 for i in ids)
    assert "\u3000e1" in where and "e2\x0b" in where  # not blanks: other ids, kept as they came


def test_with_many_partitions_a_batch_holds_enough_rows_for_slices_of_some_size(tmp_path, monkeypatch) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    import nexttouch.partitions as partitions

    n = 20_000
    rows = pa.table({"key": pc.cast(pa.array(np.arange(n) % 1_009), pa.string()), "at": np.arange(n)})
    path = tmp_path / "rows.parquet"
    pq.write_table(rows, path, row_group_size=700)  # batches span row groups
    monkeypatch.setattr(partitions, "_BATCH_ROWS", 1_000)
    monkeypatch.setattr(partitions, "_SLICE_ROWS", 200)
    meta = pq.read_metadata(path)
    assert partitions._batch_rows(meta, ["key", "at"], 2, 1.0) == 1_000  # few partitions: the least batch
    assert partitions._batch_rows(meta, ["key", "at"], 20, 1.0) == 4_000  # slices of 200 rows
    assert partitions._batch_rows(meta, ["key", "at"], 20, 1e-5) == 1_000  # no more than the budget allows

    parts = partitions.split([path], ["key"], 20, tmp_path / "parts", 1.0)
    for files in parts:
        (file,) = files
        batches = ipc.open_file(file).num_record_batches
        assert batches <= 6  # a slice of each batch of up to 4,000 rows, not one of each of 29 row groups
        got = partitions.read_partition(files, rows.schema)
        assert pc.all(pc.greater(got["at"][1:], got["at"][:-1])).as_py()  # in input order
    assert sum(partitions.read_partition(f, rows.schema).num_rows for f in parts) == n
