"""How the CLI shows things to people: rich tables, progress bars, CSV."""
