"""Work on a second thread, for loading: a call started now, its value taken later.

``threading.Thread.start()`` waits until the new thread has run; on a busy machine that
wait alone cost a load about 1 ms a thread. A :class:`Background` call starts with
``_thread.start_new_thread``, which does not wait, and is waited for by a lock the
thread releases when it is done.
"""
import _thread

__all__ = ["Background"]


class Background:
    """``function(*args)`` computed on a new daemon thread.

    Use it for work that releases the GIL (hashing, numpy, MXNet's C calls): pure Python
    on a second thread only slows the first one down.
    """

    def __init__(self, function, *args):
        self._outcome = None
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, (function, args))

    def _run(self, function, args):
        try:
            self._outcome = (True, function(*args))
        except BaseException as err:        # pylint: disable=broad-except
            self._outcome = (False, err)    # raised again by result()
        finally:
            self._done.release()

    def result(self):
        """The function's value, or its exception raised here (waits for the thread)."""
        with self._done:
            done, value = self._outcome
        if not done:
            raise value
        return value
