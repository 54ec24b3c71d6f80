"""``app.table_route``: answer a request for a key on the worker that owns the key's partition.

Faust's router asks its assignor which worker hosts a table key. sluice's co-partitioned
assignor (:mod:`service.engine.assignor`) tells every member the web URL of each partition
number's owner (its ``canonical_url``: by default ``http://<hostname>:<web port>``); the key's
partition is where a producer would place it (murmur2 of the key as sent, as the table reads it
outside an agent). A request for a key owned elsewhere is forwarded there and its answer
returned.
"""

from __future__ import annotations

from typing import Any

from faust.app.router import Router
from faust.exceptions import SameNode
from yarl import URL

from service.kafka.murmur2 import partition_for_key


class SluiceRouter(Router):
    app: Any

    def __init__(self, app: Any) -> None:
        self.app = app

    def _owners(self) -> dict[int, str]:
        owners: dict[int, str] = self.app.data_plane.engine.assignor.owners
        return owners

    def _owner(self, number: int) -> URL:
        url = self._owners().get(number)
        if not url:
            raise SameNode()
        return URL(url)

    def key_store(self, table_name: str, key: Any) -> URL:
        table = self.app.tables[table_name]
        count = table.partitions or self.app.conf.topic_partitions
        return self._owner(partition_for_key(table.route_bytes(key), count))

    def external_topic_key_store(self, topic: Any, key: Any) -> URL:
        """The worker that processes ``key``'s partition of ``topic`` (``app.topic_route``)."""
        name = topic.get_topic_name()
        return self._owner(partition_for_key(topic.encode_key(key), self.app.data_plane.partitions_of(name)))

    async def route_req(self, table_name: str, key: Any, web: Any, request: Any) -> Any:
        return await self._route_req(self.key_store(table_name, key), web, request)

    async def route_topic_req(self, topic: Any, key: Any, web: Any, request: Any) -> Any:
        return await self._route_req(self.external_topic_key_store(topic, key), web, request)

    def table_metadata(self, table_name: str) -> Any:
        out: dict[str, dict[str, list[int]]] = {}
        for number, url in sorted(self._owners().items()):
            out.setdefault(url, {}).setdefault(table_name, []).append(number)
        return out

    def tables_metadata(self) -> Any:
        out: dict[str, dict[str, list[int]]] = {}
        for name in self.app.tables:
            for url, tables in self.table_metadata(name).items():
                out.setdefault(url, {}).update(tables)
        return out
