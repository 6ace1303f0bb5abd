"""Where a grid's cells run: one module per backend behind the small protocol of
:mod:`.base`."""
