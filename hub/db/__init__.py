"""The hub's SQL store: the engine, its transactions and the tables; each table's queries live with its owner."""
