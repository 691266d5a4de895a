"""What a runner's allocation holds and what each job takes of it.

A class describes one allocation per node (``cpus``, ``memory``, GPUs) and how many nodes
it spans; a job asks for ``cpus``, ``memory`` and ``gpus``, or, asking for nothing, gets
one ``slots``-th of a node (the simple form for equal jobs).  The runner keeps a ledger of
what is booked on every node and starts a job only where all it asked for is free, so
jobs are packed by what they need rather than counted.  The same functions tell the
submitter, at intake, that a job can never fit its class.
"""
import collections
import re

# What one job takes: CPUs, memory in MiB (0: not counted) and a number of GPUs.
Request = collections.namedtuple("Request", "cpus memory_mb gpus")
# Where a started job sits: the node's name and the GPUs booked for it there.
Placement = collections.namedtuple("Placement", "node gpus")

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_MEMORY_UNITS = {"k": 1.0 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}


def memory_mb(value):
    """MiB in a memory figure as Slurm reads one: a bare number is MiB, ``500M``, ``4G``.

    None for no figure; ValueError for text that is not one.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("%r is not a memory size" % (value,))
    if isinstance(value, (int, float)):
        return int(value)
    match = _MEMORY.match(str(value))
    if not match:
        raise ValueError("%r is not a memory size (like 500M, 4G)" % (value,))
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()])


def gres_gpus(gres):
    """GPUs per node a ``--gres`` asks for: ``gpu:2``, ``gpu:a100:2``, ``gpu`` (one)."""
    count = 0
    for item in (gres or "").split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        count += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return count


def wants_gpus(resources):
    """A GPU class: its ``gres`` names GPUs or its ``gpus`` setting is not ``none`` (or 0)."""
    setting = resources.get("gpus")
    if setting is not None:
        return setting not in ("none", [], 0)
    return gres_gpus(resources.get("gres")) > 0


def class_gpus(resources):
    """GPUs per node the class says it has, when it says (a ``gpus`` count or list, else
    its gres count)."""
    setting = resources.get("gpus")
    if isinstance(setting, list):
        return len(setting)
    if isinstance(setting, int) and not isinstance(setting, bool):
        return setting
    return gres_gpus(resources.get("gres"))


def node_cpus(resources):
    """CPUs one node of the allocation holds; without a ``cpus`` setting, the slots count
    (each default job then takes one)."""
    return int(resources.get("cpus") or resources.get("slots") or 1)


def job_request(meta, resources, gpus_per_node=None):
    """What a job takes: what it asked for, else one ``slots``-th of a node.

    A job that does not say ``gpus`` gets its share of the node's GPUs (at least one when
    the node has any), as each slot did before jobs could ask.
    """
    slots = max(1, int(resources.get("slots") or 1))
    cpus = meta.get("cpus")
    if cpus is None:
        cpus = max(1, node_cpus(resources) // slots)
    memory = meta.get("memory_mb")
    if memory is None:
        node_memory = memory_mb(resources.get("memory")) or 0
        memory = node_memory // slots
    gpus = meta.get("gpus")
    if gpus is None:
        if gpus_per_node is None:
            gpus_per_node = class_gpus(resources)
        gpus = max(1, gpus_per_node // slots) if gpus_per_node else 0
    return Request(int(cpus), int(memory), int(gpus))


def never_fits(request, resources, job_class, gpus_per_node=None):
    """Why a job can never run in a runner of its class (one line per figure), or [].

    ``gpus_per_node`` None: the class's GPUs are not known before a runner starts (a
    local class that finds them on the machine), so GPUs are not judged.
    """
    problems = []
    cpus = node_cpus(resources)
    if request.cpus > cpus:
        problems.append("cpus %d exceeds the %d CPU(s) a node of class %s holds" % (request.cpus, cpus, job_class))
    memory = memory_mb(resources.get("memory"))
    if memory and request.memory_mb > memory:
        problems.append("memory %dM exceeds the %dM a node of class %s holds"
                        % (request.memory_mb, memory, job_class))
    if gpus_per_node is not None and request.gpus > gpus_per_node:
        problems.append("gpus %d exceeds the %d GPU(s) a node of class %s holds"
                        % (request.gpus, gpus_per_node, job_class))
    return problems


class Node(object):
    """One node of the allocation and what is booked on it."""

    def __init__(self, name, cpus, memory_mb, gpus):
        self.name = name
        self.cpus = cpus
        self.memory_mb = memory_mb          # None: memory is not counted
        self.gpus = list(gpus)
        self.used_cpus = 0
        self.used_memory = 0
        self.free_gpus = list(gpus)
        self.jobs = 0

    def fits(self, request):
        return (self.used_cpus + request.cpus <= self.cpus
                and (self.memory_mb is None or self.used_memory + request.memory_mb <= self.memory_mb)
                and request.gpus <= len(self.free_gpus))

    def describe(self):
        return {"node": self.name, "jobs": self.jobs, "cpus": [self.used_cpus, self.cpus],
                "memory_mb": [self.used_memory, self.memory_mb],
                "gpus": [len(self.gpus) - len(self.free_gpus), len(self.gpus)]}


class Ledger(object):
    """What is free on each node; ``place`` books a job on the first node with room."""

    def __init__(self, nodes):
        self.nodes = list(nodes)
        self._by_name = dict((node.name, node) for node in self.nodes)

    def full(self):
        """No CPU free on any node: no job can start (each takes at least one)."""
        return all(node.used_cpus >= node.cpus for node in self.nodes)

    def fits_anywhere(self, request):
        """Whether the job would fit an empty allocation like this one."""
        return any(request.cpus <= node.cpus and request.gpus <= len(node.gpus)
                   and (node.memory_mb is None or request.memory_mb <= node.memory_mb)
                   for node in self.nodes)

    def place(self, request):
        for node in self.nodes:
            if node.fits(request):
                gpus = node.free_gpus[:request.gpus]
                del node.free_gpus[:request.gpus]
                node.used_cpus += request.cpus
                node.used_memory += request.memory_mb
                node.jobs += 1
                return Placement(node.name, gpus)
        return None

    def release(self, request, placement):
        node = self._by_name[placement.node]
        node.used_cpus -= request.cpus
        node.used_memory -= request.memory_mb
        node.free_gpus.extend(placement.gpus)
        node.jobs -= 1

    def describe(self):
        return [node.describe() for node in self.nodes]


def parse_cpus_per_node(text):
    """Slurm's ``SLURM_JOB_CPUS_PER_NODE``: ``4``, ``2(x3)``, ``4,2(x2)`` -> [4, 2, 2]."""
    counts = []
    for item in (text or "").split(","):
        match = re.match(r"^\s*(\d+)(?:\(x(\d+)\))?\s*$", item)
        if not match:
            return []
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts
