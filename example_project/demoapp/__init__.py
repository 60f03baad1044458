"""The demo app: the periodic tasks of the example project and a status page."""
