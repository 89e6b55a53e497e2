"""The ASGI application as uvicorn, the Dockerfile and the manifests name it: ``app.main:app``.

Built with the settings of the environment; tests and tools call ``app.http.app.create_app``.
"""

from app.http.app import create_app

app = create_app()
