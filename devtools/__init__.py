"""Development tools (the ``dev`` extra): embedded servers, dev stack, load generator, ``top``.

Never imported by ``spanmetrics run``.
"""
