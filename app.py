"""Start the ThreatQA web server (chat UI and JSON API): `python app.py`.

Settings come from the environment (THREATQA_HOST, THREATQA_PORT, THREATQA_DOCS, THREATQA_INDEX, ...);
`threatqa serve --help` lists the command-line options.
"""

import sys

from threatqa.api import serve
from threatqa.config import Settings
from threatqa.errors import ThreatQAError

if __name__ == "__main__":
    try:
        serve(Settings.load())
    except ThreatQAError as exc:
        print(f"threatqa: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
