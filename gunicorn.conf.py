"""gunicorn settings read by the Procfile's line: check the configuration once, before any worker starts."""


def on_starting(server) -> None:
    # Imported here so that gunicorn's own start-up stays independent of the app.
    from broker import check_configuration

    check_configuration()
