"""tokenize: the stateless job. Text lines in; each line's words out, one record per line.

No table and no repartition: one agent parses and forwards. It is the baseline that shows what
the engine costs without state (the benchmark's ``sluice_stateless_eps``), and the template
for an agent that only filters, enriches or reshapes records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.wordcount import input_topic, words_of
from service.settings import Settings

if TYPE_CHECKING:
    from service.app.base import App


def register(app: App, settings: Settings) -> Any:
    lines = input_topic(app, settings, settings.tokenize_input_topic, None)
    out = app.topic(settings.tokenize_output_topic)
    limit = settings.max_record_bytes

    @app.agent(lines, name="tokenize", job="tokenize", origin_tag="")
    async def tokenize(stream: Any) -> None:
        """One output per line: ``{"words": {word: occurrences}}``, keyed like the input."""
        async for event in stream.events():
            words = dict(words_of(event.value, limit))
            key = event.message.key
            await out.send(key=key.decode("utf-8", "replace") if key else None, value={"words": words})

    return tokenize
