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

        ensure_topics()
    app.main()


if __name__ == "__main__":
    main()
