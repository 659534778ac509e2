"""The pool machinery's tests: marked slow, run by ``pytest --slow``."""
