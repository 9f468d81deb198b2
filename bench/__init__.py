"""edgefleet benchmarks: the agent's figures beside the raw ceilings of the same machine, in the same run.

Run ``python -m bench`` (see ``bench/__main__.py``); results land in ``bench/results/latest.json``.
"""
