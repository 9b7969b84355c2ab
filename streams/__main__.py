"""``python -m streams worker -l info`` runs a worker, like ``faust -A streams worker``.

Before a worker starts, every topic is created (see :mod:`streams.admin`), which avoids a
stalled first rebalance on a fresh cluster.
"""

import sys


def main() -> None:
    """Hand over to Faust's command line, with roadwatch's own commands added."""
    import streams.commands  # noqa: F401  (registers check-config)
    from streams.app import app

    if "worker" in sys.argv[1:]:
        from streams.admin import ensure_topics
        from streams.errors import ConfigError

        try:
            ensure_topics()
        except ConfigError as exc:  # topics the cluster refused or holds otherwise: said once, no traceback
            sys.exit(f"roadwatch: {exc}")
    app.main()


if __name__ == "__main__":
    main()
