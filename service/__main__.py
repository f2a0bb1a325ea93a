"""``python -m service …``: Dialtone's command line (the call records; the server is ``service.serve``).

    python -m service calls [list|show SID|export] …
    python -m service db upgrade|current

See :mod:`service.records.cli`. Only ``DATABASE_URL`` is read: no Twilio or OpenAI settings needed.
"""

from __future__ import annotations

import sys

from service.records.cli import main

if __name__ == "__main__":
    sys.exit(main())
