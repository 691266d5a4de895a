"""Recording the ends of jobs beside the runner's loop, not in it.

A runner records the jobs that ended about the same time as one batch, made durable with
two ``syncfs`` (``batchfile.write_linked``): some 3 ms each on ext4 with a journal, where a
trivial job runs in 2 ms.  Made by the runner's one loop, every slot that freed during
those syncs stayed empty until they returned: a runner of a 1000-job burst spent 0.49 s
of its 2 s in ``syncfs`` (161 calls).  A thread now writes each batch while the loop reaps
and starts jobs; ``syncfs`` (called through ``ctypes``) and ``fsync`` release the GIL.

One batch is in flight at a time: the ends that come meanwhile gather for the next, which
starts once the thread has woken the loop (through the loop's own wake-up pipe); the
runner waits for the last before it leaves.  What the thread cannot write (a full disk)
goes back to the loop, which records those jobs one by one with the full disk's
handling, as it did before; anything else it raises is raised again in the loop, where
it stops the runner as it always did.
"""
import os
import threading


class Recorder(object):
    def __init__(self, store, runner_id, wake_fd):
        self.store = store
        self.runner_id = runner_id
        self.wake_fd = wake_fd      # written to when a batch is done
        self._thread = None
        self._batch = None      # (ending, jobs) of the batch in flight
        self._error = None

    def start(self, ending, jobs):
        """Record ``ending`` ((job id, FinishedRecord) pairs) in the background; ``jobs``
        is what the loop needs should the batch fail.  The batch before must have been
        waited for (``wait``)."""
        self._batch, self._error = (ending, jobs), None
        self._thread = threading.Thread(target=self._record, name="recorder")
        self._thread.daemon = True
        self._thread.start()

    def busy(self):
        return self._thread is not None and self._thread.is_alive()

    def wait(self):
        """Wait for the batch in flight; its (ending, jobs) when the filesystem refused it,
        else None."""
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        batch, error, self._batch, self._error = self._batch, self._error, None, None
        if error is None:
            return None
        if isinstance(error, OSError):
            return batch
        raise error

    def _record(self):
        try:
            self.store.finish_many(self.runner_id, self._batch[0])
        except BaseException as error:     # handed to the loop (``wait``)
            self._error = error
        try:
            os.write(self.wake_fd, b"r")
        except OSError:     # the pipe is full: the loop is awake already
            pass
