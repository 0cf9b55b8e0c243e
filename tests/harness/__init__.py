"""Machinery behind the test fixtures: real servers started in temp dirs.

Each module starts one kind of real thing (redis-server, PostgreSQL, the
gateway, a cuttable TCP proxy) and stops it again, with no pytest in sight,
so the same code serves fixtures, benchmarks and ad-hoc scripts. The fixtures
themselves live in tests/conftest.py.
"""
