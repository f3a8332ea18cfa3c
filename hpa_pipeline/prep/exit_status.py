"""Exit statuses of the preprocessing commands (README and docs/cli.md, "Exit statuses").

Kept apart from the modules that compute them so that ``extract`` needs neither zarr nor the
store builder to say "some samples failed".
"""
EXIT_SOME_FAILED = 3  # some samples failed; the rest are written, and a rerun retries the failed ones
