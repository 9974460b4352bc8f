"""Provider implementations: `local` (this machine, the embedded default) and `fake` (in memory,
for tests). Cloud providers live here too, each importing its SDK only inside its own module.
"""
