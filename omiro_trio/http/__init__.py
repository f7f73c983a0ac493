"""The HTTP layer: what the bytes of an accepted connection ask for, and who answers.

It knows no application: the endpoints it answers itself, the WebSocket
handler, the ASGI app and how a request's client is found are given to it
(``server.py`` does). Its modules, lowest first:

* ``heads``: request heads, their end, their budget, their two readers;
* ``answers``: the JSON answers it writes itself, their one renderer, the
  security headers, the error codes (``HttpError``);
* ``deadlines``: the deadlines of every wait, as one value;
* ``routes``: ``Router.route(head)``, where every request goes;
* ``streams``: hypercorn's view of a connection (``HttpStream``: one
  request at a time, every later request routed) and the replay stream
  handed to the WebSocket path;
* ``serve``: ``HttpServer.serve``, one connection from its first byte.

``docs/decisions/0004-http-layer.md`` has the path of a request and where
to add an endpoint.
"""
