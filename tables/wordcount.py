"""The wordcount table: word -> running count."""

from tables.table import TableSpec

WORDCOUNT = TableSpec(name="wordcount", schema="count.v1", description="word -> running count")
