"""tusd-py benchmarks: a tus load generator (``bench.loadgen``), a minimal aiohttp
baseline server (``bench.baseline_server``) and the one-command comparison
(``python -m bench.run``). Benchmarks, not tests: nothing here asserts timings."""
