"""Bake-time helpers, importable by the hook scripts, the Jinja extension and the tests.

Everything here runs in cookiecutter's own interpreter, so it uses the standard library
(and Jinja, which cookiecutter brings) only.
"""
