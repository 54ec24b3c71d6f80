"""Tables: offset-guarded rows in RocksDB, each row's value and source positions in one record."""
