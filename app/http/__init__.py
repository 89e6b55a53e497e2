"""The HTTP edge: the ASGI app, its routes, auth, middleware and the error mapping.

Thin by rule: validate, open one transaction through a use case, map its errors.
"""
