"""The fleet simulation: a thousand real agents in a few processes on one Mosquitto and etcd.

Run it with ``python -m bench.fleet`` (``make bench-fleet``); see :mod:`bench.fleet.__main__`.
"""
