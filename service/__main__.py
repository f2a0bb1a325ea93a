"""``python -m service …``: Dialtone's command line (the server is ``service.serve``).

    python -m service calls [list|show SID|export] …
    python -m service db upgrade|current
    python -m service call +1… --agent KEY [--from +1…] [--amd] [--param name=value …]
    python -m service numbers list | point +1… [--agent KEY] [--dry-run]

The call records: :mod:`service.records.cli` (only ``DATABASE_URL`` is read). Outbound calls and numbers:
:mod:`service.outbound_cli` (the service's Twilio settings).
"""

from __future__ import annotations

import sys

from service import outbound_cli
from service.records.cli import main

if __name__ == "__main__":
    sys.exit(outbound_cli.main() if sys.argv[1:2] in (["call"], ["numbers"]) else main())
