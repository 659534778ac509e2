"""The template's own tests: bake variants and run what they bake."""
