"""threatqa: questions about threat assessments, answered with exact, cited passages.

from threatqa import Engine, Settings
engine = Engine.start(Settings.load(docs="docs", index="index"))
answer = engine.ask("How much money does organised crime generate?")
"""

__version__ = "0.1.0"

from threatqa.answer import Answer, Citation, Passage, format_text
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.errors import ThreatQAError

__all__ = ["Answer", "Citation", "Engine", "Passage", "Settings", "ThreatQAError", "__version__", "format_text"]
