"""
The simulator behind C{lbproxy simulate}: the real pool, strategies,
passive and active health and retry decision, on a virtual clock, with
modelled servers instead of sockets.

  - L{lbproxy.simulation.clock}: the virtual clock (an C{IReactorTime}).
  - L{lbproxy.simulation.scenario}: the scenario file and its models.
  - L{lbproxy.simulation.arrivals}: when requests arrive (Poisson, or an
    access log's times).
  - L{lbproxy.simulation.driver}: one run of one strategy.
  - L{lbproxy.simulation.report}: the table, the JSON and the plot.
"""
