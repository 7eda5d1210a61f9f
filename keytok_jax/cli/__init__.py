"""The command layer: one thin module per ``python -m keytok_jax.X`` command (parse the flags,
call the library, print). Only this layer turns errors into ``error:`` lines and exit codes
(:func:`keytok_jax.cli.common.run_command`)."""
