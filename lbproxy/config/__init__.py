"""
Configuration: the one option table, the frozen model, the command line
and the TOML file.

  - L{lbproxy.config.options}: how an option is declared (kinds, reload);
  - L{lbproxy.config.model}: every option, declared once, on the model;
  - L{lbproxy.config.servers}: upstream addresses;
  - L{lbproxy.config.commandline}: C{twistd lbproxy} options from the table;
  - L{lbproxy.config.file}: the TOML file from the table.
"""
