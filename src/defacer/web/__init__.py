"""The local web interface (extra ``web``): upload a scan, see the features, deface, verify, download.

:func:`defacer.web.app.create_app` builds the ASGI application; ``defacer serve`` runs it on
uvicorn bound to 127.0.0.1.  Nothing is imported here so that ``import defacer.web`` works
without the extra; importing :mod:`defacer.web.app` needs FastAPI.
"""
