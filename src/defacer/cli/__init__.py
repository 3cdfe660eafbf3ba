"""The ``defacer`` command line: one module per subcommand, composed by :mod:`defacer.cli.main`."""
