"""``omiro bench``: the load generator that measures a real ``omiro serve`` on loopback.

A package of its own beside the server: ``omiro_trio`` imports nothing from
it, and ``omiro bench`` reaches it through the ``omiro.commands`` entry
point. Its modules:

* ``cli``: the ``omiro bench`` commands (options to a scenario's options);
* ``run``: a run of one scenario, the parent's side (server, generator
  processes, samples at each phase's edges);
* ``scenario``: the ``Scenario`` shape and ``LoadGenerator``, what a scenario
  is given in each generator process;
* ``relay``, ``churn`` (connect and churn), ``idle``, ``realistic``: one
  scenario each, with its options type; ``find_max`` steps ``realistic``;
* ``sessions`` and ``client``: the lean WebSocket and HTTP client they drive;
* ``server``: the server process under measurement.

A scenario is added as a module with a frozen options dataclass and a
``Scenario``, and a command in ``cli``.
"""
