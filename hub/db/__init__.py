"""The hub's SQL store: the engine and its transactions, the tables, the plain records it returns."""
