"""KServe serving of the reasoner, the ranker and the composed ``recommend`` path (issue #7).

``import kserve`` parses ``sys.argv`` at import time (pytest or CLI flags would leak into the server's
defaults), so it is imported only through ``kserve_module()``, with a clean ``argv``.
"""
import sys


def kserve_module():
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
        return kserve
    finally:
        sys.argv = argv
