"""Which GPUs a runner on the embedded (local) scheduler may hand out.

Under Slurm the allocation names its GPUs; on a plain machine nothing does, and a runner
that saw none used to start every job of a GPU class at once on the same GPU.  So, in this
order: ``CUDA_VISIBLE_DEVICES`` when set (the operator's choice), the class's ``gpus``
list (``none`` for none), ``nvidia-smi -L``, then the driver's ``/proc/driver/nvidia/gpus``.
"""
import os
import re

from . import commands

PROC_GPUS = "/proc/driver/nvidia/gpus"
NVIDIA_SMI_TIMEOUT_SECONDS = 20


class NoGpus(ValueError):
    """A GPU class found no GPU to hand out: the operator must say which (or none)."""


def local_gpus(setting, gpu_class, environ=None, proc_dir=PROC_GPUS, smi=None):
    """The GPU ids (as CUDA numbers them) jobs of this runner get, one list entry each.

    ``setting`` is the class's ``gpus``: None or ``auto`` (find them), ``none``, a list of
    ids, or a count (the first that many found).  ``gpu_class``: the class needs GPUs, so
    finding none (or fewer than the count) is an error.
    """
    environ = os.environ if environ is None else environ
    if setting == "none" or setting == 0:
        return []
    if isinstance(setting, list):
        return [str(gpu) for gpu in setting]
    if isinstance(setting, int) and not isinstance(setting, bool):
        found = local_gpus(None, True, environ, proc_dir, smi)
        if len(found) < setting:
            raise NoGpus("this class asks for %d GPU(s) but only %d were found (%s)"
                         % (setting, len(found), ", ".join(found) or "none"))
        return found[:setting]
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        # Set, even empty: the operator (or a scheduler) decided; "-1"/"" mean none.
        found = [gpu for gpu in visible.split(",") if gpu and not gpu.startswith("-")]
    elif not gpu_class:
        return []
    else:
        found = smi_gpus(smi) or proc_gpus(proc_dir)
    if gpu_class and not found:
        raise NoGpus("this class needs GPUs but none was found (CUDA_VISIBLE_DEVICES %s, no GPU from "
                     "`nvidia-smi -L` or in %s): list them in the class (gpus: [0, 1]), or set "
                     "gpus: none and drop its gres" % ("is empty" if visible is not None else "unset",
                                                      proc_dir))
    return found


def smi_gpus(run=None):
    """Indexes of the GPUs ``nvidia-smi -L`` lists (``GPU 0: NVIDIA H100 ... (UUID: ...)``)."""
    run = run or _run_smi
    text = run()
    return [match.group(1) for match in re.finditer(r"^GPU (\d+):", text or "", re.MULTILINE)]


def proc_gpus(proc_dir=PROC_GPUS):
    """One folder per GPU (named by PCI address) in the driver's proc tree; CUDA numbers
    the GPUs it sees 0..n-1, so the count is what matters."""
    try:
        names = sorted(name for name in os.listdir(proc_dir) if not name.startswith("."))
    except OSError:
        return []
    return [str(index) for index in range(len(names))]


def _run_smi():
    """``nvidia-smi -L``'s listing; empty where it is missing, fails or hangs."""
    try:
        return commands.run(["nvidia-smi", "-L"], NVIDIA_SMI_TIMEOUT_SECONDS)
    except (commands.CommandUnavailable, commands.CommandFailed):
        return ""
