"""The SQL of the benchmark's reads, shared by the apps so that every one runs the same text.

Every read returns the first 10 rows by id: the 10 rows that the benchmark seeds. The
writes workload keeps adding rows after them, which a read never reaches.
"""

# What the baked app's GET /items?limit=10 runs, as the reference apps write it by hand.
LIST_QUERY = "SELECT id, name, description, created_at FROM items ORDER BY id LIMIT 10"

# The same rows, 50 ms later: pg_sleep in FROM is a function scan, run once per query.
SLOW_QUERY = (
    "SELECT id, name, description, created_at FROM items, pg_sleep(0.05) ORDER BY id LIMIT 10"
)
