"""``python -m hub``: the hub CLI."""

from hub.cli import main

if __name__ == "__main__":
    main()
