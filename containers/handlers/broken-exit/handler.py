"""broken-exit: a release that cannot start (the test suite pushes it as temp-c 1.2-exit).

It exits with status 3 before reading stdin, so it never answers a ping or an event: a rollout to it must fail
its health check and roll back.
"""

import sys

sys.stderr.write("broken-exit: missing configuration, refusing to start\n")
sys.exit(3)
