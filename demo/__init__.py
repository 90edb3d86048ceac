"""``refitd demo``: the replayed stream, its summary and plots. Nothing else imports this package."""
