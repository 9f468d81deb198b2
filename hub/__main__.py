"""``python -m hub``: the hub CLI."""

from hub.cli.app import main

if __name__ == "__main__":
    main()
