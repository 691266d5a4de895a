"""bench/cpu_by_process.py: each process of a burst is told apart by its parent."""
from helpers import load_bench

cpu_by_process = load_bench("cpu_by_process")

DUMP = """\
python          |v3|    40.00|    10.00|   300.00|     0|     0| 1.00| 1.00|     200|     100|     |       0|__
python          |v3|    20.00|     2.00|   280.00|     0|     0| 1.00| 1.00|     201|     200|     |       0|__
python          |v3|     3.00|     1.00|    40.00|     0|     0| 1.00| 1.00|     202|     200|     |       0|__
bash            |v3|     0.00|     0.00|     1.00|     0|     0| 1.00| 1.00|     301|     300|     |       0|__
bash            |v3|     0.00|     1.00|     1.00|     0|     0| 1.00| 1.00|     302|     300|     |       0|__
python          |v3|    30.00|    20.00|   900.00|     0|     0| 1.00| 1.00|     300|       1|     |       0|__
python          |v3|     4.00|     2.00|    50.00|     0|     0| 1.00| 1.00|     400|       1|     |       0|__
sleep           |v3|     0.00|     0.00|    10.00|     0|     0| 1.00| 1.00|     500|     100|     |       0|__
"""


def test_a_burst_s_processes_are_told_apart_by_their_parents():
    """The runner outlives the head node that started it (its parent is then init), so it
    is known as the parent of the jobs; a detached sweep has no parent left either."""
    processes = cpu_by_process.parse_dump(DUMP)
    assert [process.cpu_ms for process in processes][:2] == [500.0, 220.0]       # ticks of 10 ms
    kinds = cpu_by_process.classify(processes, bench_pid=100)
    assert kinds == {200: "submitter", 201: "head node", 202: "head node", 300: "runner",
                     301: "jobs", 302: "jobs", 400: "sweeps"}
