# twistd -ny cachetier.tac, configured from the environment:
#   CACHETIER_ORIGIN (required), CACHETIER_CACHE_DIR, CACHETIER_LISTEN
#   (space-separated endpoints), CACHETIER_PUBLIC_URL, CACHETIER_MISS,
#   CACHETIER_MAX_CONCURRENT_SYNCS, CACHETIER_ORIGIN_TIMEOUT,
#   CACHETIER_CACHE_CONTROL_MAX_AGE, CACHETIER_TTL, CACHETIER_MAX_SIZE, ...
# Each is the command-line flag of the same name (see twistd cachetier --help).
# CACHETIER_ADMIN_TOKEN is the admin token itself, read by the service.
import os

from twisted.application.service import Application

from cachetier.tap import Options, makeService

options = Options()
options.parseOptions(
    [
        f"--{key[len('CACHETIER_'):].lower().replace('_', '-')}={value}"
        for key, value in sorted(os.environ.items())
        if key.startswith("CACHETIER_") and key not in ("CACHETIER_LISTEN", "CACHETIER_ADMIN_TOKEN")
    ]
    + [f"--listen={endpoint}" for endpoint in os.environ.get("CACHETIER_LISTEN", "").split()]
)
application = Application("cachetier")
makeService(options).setServiceParent(application)
