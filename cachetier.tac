# twistd -ny cachetier.tac, configured from the environment:
#   CACHETIER_ORIGIN (required), CACHETIER_CACHE_DIR, CACHETIER_LISTEN
#   (space-separated endpoints), CACHETIER_PUBLIC_URL, CACHETIER_MISS,
#   CACHETIER_MAX_CONCURRENT_SYNCS, CACHETIER_ORIGIN_TIMEOUT,
#   CACHETIER_CACHE_CONTROL_MAX_AGE, CACHETIER_TTL, CACHETIER_MAX_SIZE, ...
# Each is the command-line flag of the same name (see twistd cachetier --help).
# CACHETIER_ADMIN_TOKEN is the admin token itself, read by the service.
import os
import re

from twisted.application.service import Application
from twisted.python.usage import UsageError

from cachetier.tap import Options, makeService

# The flag each variable stands for, so that an error names the variable.
variables = {
    "--" + key[len("CACHETIER_") :].lower().replace("_", "-"): key
    for key in os.environ
    if key.startswith("CACHETIER_") and key != "CACHETIER_ADMIN_TOKEN"
}
options = Options()
try:
    options.parseOptions(
        [
            f"{flag}={os.environ[key]}"
            for flag, key in sorted(variables.items())
            if key != "CACHETIER_LISTEN"
        ]
        + [f"--listen={endpoint}" for endpoint in os.environ.get("CACHETIER_LISTEN", "").split()]
    )
except UsageError as e:
    named = re.sub(r"--[a-z0-9-]+", lambda flag: variables.get(flag[0], flag[0]), str(e))
    raise SystemExit(f"cachetier.tac: {named}") from None
application = Application("cachetier")
makeService(options).setServiceParent(application)
