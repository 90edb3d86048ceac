"""The ``refitd`` command: one module per command group. Nothing else imports this package."""
