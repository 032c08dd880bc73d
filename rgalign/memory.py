"""Process memory: hand freed heap back to the OS between data parts (``release_memory``)."""
import ctypes
import ctypes.util


def release_memory() -> None:
    """glibc ``malloc_trim(0)``: after a data part's frames are freed, the heap they fragmented goes back to the
    OS, so peak RSS does not creep up with the number of parts (a no-op where libc is not glibc)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
